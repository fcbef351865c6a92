-- Least privilege. Readers (any role that may SELECT a tracked table) use the
-- pull API: it runs as the caller, so table privileges still apply, and the
-- tombstones policy shows only the tables the caller may read. Tracking,
-- untracking and cleanup are for the owner: GRANT them explicitly.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tributary FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_track(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_untrack(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_cleanup() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_restored() FROM PUBLIC;
-- Applying a peer's changes lets the caller claim revisions and win
-- conflicts: only for the peers' roles (GRANT EXECUTE ON FUNCTION
-- sync_apply(regclass, jsonb, text), ...). The caller also needs INSERT,
-- UPDATE and DELETE on the table.
REVOKE ALL ON FUNCTION @extschema@.sync_apply(regclass, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_set_peer(text, integer, regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_resolve_conflict(bigint, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_retry_pending(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_set_policy(regclass, text, regprocedure) FROM PUBLIC;
-- A row filter is set by its table's owner (sync_set_filter checks it too).
REVOKE ALL ON FUNCTION @extschema@.sync_set_filter(regclass, text) FROM PUBLIC;
-- Queues: creating and consuming are granted explicitly (to the worker's
-- and the consumers' roles), with the queue tables themselves.
REVOKE ALL ON FUNCTION @extschema@.sync_queue_create(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_queue_read(text, integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_queue_ack(text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_queue_nack(text, bigint[], text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_queue_cleanup(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_queue_stats(text) FROM PUBLIC;

GRANT USAGE ON SCHEMA tributary TO PUBLIC;
GRANT SELECT ON tributary.tracked, tributary.tombstones, tributary.conflicts, tributary.peers, tributary.policies TO PUBLIC;
GRANT SELECT ON tributary.schema_changes TO PUBLIC;  -- row-level security applies
GRANT SELECT ON tributary.restores TO PUBLIC;        -- the version offset readers' versions carry
GRANT SELECT ON @extschema@.sync_policies TO PUBLIC;
GRANT SELECT ON @extschema@.sync_conflicts, @extschema@.sync_pending TO PUBLIC;
GRANT SELECT ON tributary.dead_letters, @extschema@.sync_dead_letters TO PUBLIC;  -- row-level security applies
GRANT SELECT ON tributary.pending TO PUBLIC;  -- row-level security applies
GRANT SELECT ON tributary.filters, tributary.moves, @extschema@.sync_filters TO PUBLIC;  -- row-level security applies
-- Nobody but the owner writes tombstones, conflicts or parked changes: the
-- engine, the delete trigger and _close_conflict switch to the owner for
-- those writes alone, after checking the caller (extension/src/privilege.rs).
GRANT EXECUTE ON FUNCTION
    tributary._raise(text, text, text, text),
    tributary._tracked(regclass),
    tributary._window_tables(bigint, bigint, regclass[]),
    tributary._changes_query(oid, bigint, boolean, boolean),
    tributary._scoped(),                         -- row filters: the SQL the pull API builds
    tributary._admits(tributary.filters, text),
    tributary._admits_image(tributary.filters, text),
    tributary._seen_images(tributary.filters, text),
    tributary._seen(tributary.filters, text),
    tributary._changed_images(oid, bigint),
    tributary._changed_for(bigint, bigint, boolean, oid[], text[]),  -- sync_changed_for, as the caller
    tributary._check_filter_text(text),
    tributary._store_filter(regclass, text, text[]),  -- acts only for callers of sync_set_filter who own the table
    tributary.changed_columns(bytea, bigint, bigint, smallint[], text[]),
    tributary.colmeta_entries(bytea),
    tributary.row_json(anyelement),
    tributary._apply(regclass, jsonb, text),      -- acts only for callers of sync_apply
    tributary._replay_parked(regclass),          -- likewise (sync_retry_pending); replays as each parker
    tributary._close_conflict(bigint, text),     -- acts only for callers of sync_resolve_conflict
    tributary._key_in_scope(regclass, jsonb),    -- sync_resolve_conflict's filter check, as the caller
    tributary._follow_ddl(oid),                  -- the DDL guard, run as whoever altered a table
    tributary._queue_position(text),             -- for sync_queue_create's callers; needs the queue's owner
    tributary._version_offset(),
    tributary._hub_identity(),
    tributary.payload_item(text, json)          -- sync_payload_rows' splice
  TO PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_worker_grant(regrole) FROM PUBLIC;
-- The HTTP gateway (sql/gateway.sql). What it runs per request runs as the
-- caller, like the pull API. sync_act_for_peer only switches to a role the
-- session's login role is a member of, as SET ROLE does; sync_claim reads
-- what the session set. The shared watcher's sync_tables_changed sees past
-- privileges (which tables changed): granted by sync_gateway_grant(role).
GRANT EXECUTE ON FUNCTION
    @extschema@.sync_act_for_peer(text, jsonb),
    @extschema@.sync_claim(text),
    @extschema@.sync_payload_window(regclass, bigint),
    @extschema@.sync_payload_rows(regclass, bigint, bigint, jsonb, integer),
    @extschema@.sync_row(regclass, jsonb, boolean),
    @extschema@.sync_schema(),
    @extschema@.sync_changed_for(bigint, bigint, regclass[], jsonb[])  -- as the caller: privileges and RLS apply
  TO PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_tables_changed(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_gateway_grant(regrole) FROM PUBLIC;
