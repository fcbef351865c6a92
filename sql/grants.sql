-- Least privilege. Readers (any role that may SELECT a tracked table) use the
-- pull API: it runs as the caller, so table privileges still apply, and the
-- tombstones policy shows only the tables the caller may read. Tracking,
-- untracking and cleanup are for the owner: GRANT them explicitly.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tributary FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_track(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_untrack(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_cleanup() FROM PUBLIC;

GRANT USAGE ON SCHEMA tributary TO PUBLIC;
GRANT SELECT ON tributary.tracked, tributary.tombstones TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    tributary._raise(text, text, text, text),
    tributary._tracked(regclass),
    tributary._window_tables(bigint, bigint, regclass[]),
    tributary._changes_query(oid, bigint, boolean),
    tributary.changed_columns(bytea, bigint, bigint, smallint[], text[]),
    tributary.colmeta_entries(bytea),
    tributary.row_json(anyelement)
  TO PUBLIC;
