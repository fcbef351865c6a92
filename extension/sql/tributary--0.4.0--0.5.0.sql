-- Tributary 0.4.0 -> 0.5.0: safe to expose. Run by ALTER EXTENSION
-- tributary UPDATE; every step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.5.0'" to load this file. \quit

-- 1. Peer identity: a peer is registered with the role that may speak for
--    it. Existing peers get no role: until an admin names one
--    (sync_set_peer(name, priority, role)), only superusers may claim them.
ALTER TABLE tributary.peers ADD COLUMN IF NOT EXISTS role regrole;
DROP FUNCTION IF EXISTS @extschema@.sync_set_peer(text, integer);

-- 2. Internal state only through the API: nobody but the owner writes
--    tombstones, conflicts or parked changes; the engine switches to the
--    owner for those writes (extension/src/privilege.rs).
DROP POLICY IF EXISTS conflicts_writable ON tributary.conflicts;
DROP POLICY IF EXISTS conflicts_resolvable ON tributary.conflicts;
DROP POLICY IF EXISTS tombstones_writable ON tributary.tombstones;
DROP POLICY IF EXISTS tombstones_rewritable ON tributary.tombstones;
DROP POLICY IF EXISTS pending_writable ON tributary.pending;
REVOKE INSERT, UPDATE, DELETE ON tributary.pending FROM PUBLIC;
REVOKE INSERT, UPDATE ON tributary.tombstones, tributary.conflicts FROM PUBLIC;

-- 3. A parked change is replayed as the role that parked it. Those parked
--    before 0.5.0 have no known parker (any role could write the table):
--    they become dead letters, kept in sync_pending to be replayed by hand.
ALTER TABLE tributary.pending ADD COLUMN IF NOT EXISTS parked_by regrole;
UPDATE tributary.pending
   SET status = 'dead',
       last_error = 'parked before 0.5.0: who parked it is unknown, so it is not replayed; check it and apply it by hand'
 WHERE status = 'pending' AND parked_by IS NULL;
CREATE OR REPLACE FUNCTION tributary._replay_parked(tbl regclass)
RETURNS TABLE (id bigint, tbl_name regclass, pk jsonb, outcome text, attempts integer, detail text)
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_replay_parked_wrapper';
CREATE OR REPLACE FUNCTION tributary._close_conflict(id bigint, resolution text) RETURNS void
VOLATILE LANGUAGE c AS 'MODULE_PATHNAME', '_close_conflict_wrapper';

-- 4. Definer code runs no user code: the delete trigger is Rust, run as
--    the deleting role, and writes the tombstone as the owner.
CREATE OR REPLACE FUNCTION tributary._on_delete() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_on_delete_wrapper';

-- 5. The API functions that changed (byte for byte as in sql/; see
--    scripts/sql_blocks.py).
CREATE OR REPLACE FUNCTION @extschema@.sync_set_peer(name text, priority integer, role regrole DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF name IS NULL OR priority IS NULL THEN
        PERFORM tributary._raise('22004', 'peer name and priority must not be NULL',
            format('name = %s, priority = %s.', coalesce(quote_literal(name), 'NULL'), coalesce(priority::text, 'NULL')),
            'Lower numbers win: SELECT sync_set_peer(''CRM'', 1, ''crm_role''). The hub itself is the peer named ''''.');
    END IF;
    IF octet_length(name) > 255 THEN
        PERFORM tributary._raise('22023', 'peer name is too long',
            format('%s bytes; at most 255.', octet_length(name)), 'Use a shorter name.');
    END IF;
    IF name = '' AND role IS NOT NULL THEN
        PERFORM tributary._raise('22023', 'the hub''s own writes (the peer named '''') take no role',
            'Every session may write as the hub.', 'Call sync_set_peer('''', priority) without a role.');
    END IF;
    INSERT INTO tributary.peers AS p (name, priority, role) VALUES (name, priority, role)
    ON CONFLICT ON CONSTRAINT peers_pkey DO UPDATE
       SET priority = excluded.priority, role = coalesce(excluded.role, p.role), updated_at = now();
END $$;
COMMENT ON FUNCTION @extschema@.sync_set_peer(text, integer, regrole) IS
  'Register a peer: its priority for the resolver (lower wins) and the role that may speak for it.';

CREATE OR REPLACE FUNCTION @extschema@.sync_set_policy(tbl regclass, policy text, resolver regprocedure DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE
    t tributary.tracked := tributary._tracked(tbl);
BEGIN
    IF policy IS NULL OR policy NOT IN ('ladder', 'last_writer_wins', 'hub_wins', 'peer_wins', 'custom') THEN
        PERFORM tributary._raise('22023', format('unknown policy %s', coalesce(quote_literal(policy), 'NULL')),
            'A policy decides overlapping changes at the same revision.',
            'Use ladder (the default), last_writer_wins, hub_wins, peer_wins or custom.');
    END IF;
    IF policy = 'custom' THEN
        IF resolver IS NULL THEN
            PERFORM tributary._raise('22023', 'the custom policy needs a resolver function',
                format('sync_set_policy(%L, ''custom'') was given no function.', tbl::text),
                'Pass a function (local jsonb, remote jsonb, base jsonb) RETURNS jsonb, e.g. ''my_merge(jsonb,jsonb,jsonb)''::regprocedure.');
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = resolver AND p.prorettype = 'jsonb'::regtype
                         AND p.pronargs = 3 AND p.proargtypes[0] = 'jsonb'::regtype AND p.proargtypes[1] = 'jsonb'::regtype AND p.proargtypes[2] = 'jsonb'::regtype
                         AND p.prokind = 'f' AND NOT p.proretset) THEN
            PERFORM tributary._raise('42883', format('%s is not a resolver function', resolver),
                'A resolver takes (local jsonb, remote jsonb, base jsonb) and returns one jsonb row object.',
                'CREATE FUNCTION my_merge(local jsonb, remote jsonb, base jsonb) RETURNS jsonb ... and pass ''my_merge(jsonb,jsonb,jsonb)''.');
        END IF;
        -- It runs as the table's owner, who must own it: a resolver cannot
        -- borrow the privileges of the role calling sync_apply.
        IF (SELECT p.proowner FROM pg_proc p WHERE p.oid = resolver)
           IS DISTINCT FROM (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl) THEN
            PERFORM tributary._raise('42501', format('%s is not owned by the owner of %s', resolver, tbl),
                format('%s is owned by %s; %s by %s. A custom resolver runs as the table''s owner.', resolver,
                       (SELECT p.proowner::regrole FROM pg_proc p WHERE p.oid = resolver), tbl,
                       (SELECT c.relowner::regrole FROM pg_class c WHERE c.oid = tbl)),
                'Use a function the table''s owner owns (ALTER FUNCTION ... OWNER TO).');
        END IF;
    ELSIF resolver IS NOT NULL THEN
        PERFORM tributary._raise('22023', format('policy %s takes no resolver function', policy),
            format('resolver = %s.', resolver), 'Pass a resolver only with the custom policy.');
    END IF;
    INSERT INTO tributary.policies AS p (relid, policy, resolver) VALUES (tbl, policy, resolver)
    ON CONFLICT (relid) DO UPDATE SET policy = excluded.policy, resolver = excluded.resolver, updated_at = now();
    -- The row trigger stamps a clock on local writes only under last_writer_wins.
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_track ON %s', tbl);
    EXECUTE format('CREATE TRIGGER zzz_tributary_track BEFORE INSERT OR UPDATE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary.row_trigger(%s)', tbl,
                   CASE WHEN policy = 'last_writer_wins' THEN '''lww''' ELSE '' END);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_tributary_track', tbl);
END $$;
COMMENT ON FUNCTION @extschema@.sync_set_policy(regclass, text, regprocedure) IS
  'Set how sync_apply decides overlapping changes at the same revision for a table.';

CREATE OR REPLACE FUNCTION @extschema@.sync_resolve_conflict(id bigint, resolution jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    c tributary.conflicts;
    t tributary.tracked;
    merged jsonb;
    cols_sql text;
    sets text;
    bad_col text;
    prev_origin text;
BEGIN
    SELECT * INTO c FROM tributary.conflicts WHERE conflicts.id = sync_resolve_conflict.id;
    IF NOT FOUND THEN
        PERFORM tributary._raise('22023', format('no conflict %s', id),
            format('Conflict id %s does not exist, or its table is not readable to you.', id),
            'See SELECT * FROM sync_conflicts WHERE status = ''open''.');
    END IF;
    IF c.status <> 'open' THEN
        PERFORM tributary._raise('22023', format('conflict %s is already resolved', id),
            format('It was resolved at %s with %s.', c.resolved_at, c.resolution), 'Nothing to do.');
    END IF;
    t := tributary._tracked(c.relid::regclass);
    IF resolution IS NULL OR NOT (resolution IN ('"keep_local"', '"take_remote"') OR jsonb_typeof(resolution) = 'object') THEN
        PERFORM tributary._raise('22023', 'resolution must be "keep_local", "take_remote" or a row object',
            format('Got %s.', coalesce(resolution::text, 'NULL')),
            'E.g. sync_resolve_conflict(42, ''"take_remote"''), or a merged row: ''{"email": "x@y"}''.');
    END IF;

    -- Closed first (locked, and only for a role that may write the table),
    -- then applied: two resolutions of one conflict cannot both apply.
    PERFORM tributary._close_conflict(c.id, resolution::text);
    merged := CASE WHEN resolution = '"keep_local"' THEN c.local
                   WHEN resolution = '"take_remote"' THEN c.remote
                   ELSE resolution END;
    -- The resolution is a new revision made by the hub (a local origin): it
    -- flows to every peer, the writer of the conflicting change included.
    prev_origin := current_setting('tributary.origin', true);
    PERFORM set_config('tributary.origin', '', true);
    IF merged IS NULL THEN
        EXECUTE format('DELETE FROM %s AS r USING jsonb_populate_record(NULL::%s, $1) AS k WHERE %s',
                       c.relid::regclass, c.relid::regclass,
                       (SELECT string_agg(format('r.%1$I = k.%1$I', k), ' AND ') FROM unnest(t.pk_columns) k))
            USING c.pk;
    ELSE
        merged := (merged - t.pk_columns) || c.pk;
        SELECT k INTO bad_col FROM jsonb_object_keys(merged) k
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.relid AND a.attname = k
                             AND a.attnum > 0 AND NOT a.attisdropped)
            OR k IN ('sync_version', 'sync_xid', 'sync_created_xid', 'sync_origin', 'sync_colmeta')
         LIMIT 1;
        IF FOUND THEN
            PERFORM tributary._raise('42703', format('the resolution names an unknown column %I', bad_col),
                format('%s has no column %I that a resolution may set.', c.relid::regclass, bad_col),
                'Use the table''s own columns.');
        END IF;
        SELECT string_agg(quote_ident(k), ', '),
               coalesce(string_agg(format('%1$I = excluded.%1$I', k), ', ') FILTER (WHERE k <> ALL (t.pk_columns)), '')
          INTO cols_sql, sets FROM jsonb_object_keys(merged) k;
        EXECUTE format('INSERT INTO %1$s AS r (%2$s) SELECT %2$s FROM jsonb_populate_record(NULL::%1$s, $1)
                        ON CONFLICT (%3$s) DO %4$s',
                       c.relid::regclass, cols_sql,
                       (SELECT string_agg(quote_ident(k), ', ') FROM unnest(t.pk_columns) k),
                       CASE WHEN sets = '' THEN 'NOTHING' ELSE 'UPDATE SET ' || sets END)
            USING merged;
    END IF;
    PERFORM set_config('tributary.origin', coalesce(prev_origin, ''), true);
    RETURN id;
END $$;
COMMENT ON FUNCTION @extschema@.sync_resolve_conflict(bigint, jsonb) IS
  'Close a conflict with "keep_local", "take_remote" or a merged row, applied as a new hub revision.';

CREATE OR REPLACE FUNCTION @extschema@.sync_retry_pending(tbl regclass DEFAULT NULL)
RETURNS TABLE (id bigint, tbl_name regclass, pk jsonb, outcome text, attempts integer, detail text)
LANGUAGE sql VOLATILE
AS $$ SELECT * FROM tributary._replay_parked(tbl) $$;
COMMENT ON FUNCTION @extschema@.sync_retry_pending(regclass) IS
  'Retry parked changes (all, or those of / waiting for one table). sync_apply also calls it for the changes waiting for the table it wrote.';

-- 6. Poison changes: hub changes a peer refused max_attempts times are
--    set aside here by the worker, so that the peer's stream goes on. The
--    worker's role may insert them (re-run sync_worker_grant).
CREATE TABLE IF NOT EXISTS tributary.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination text NOT NULL,
    lsn         pg_lsn NOT NULL,          -- the commit of the source transaction
    ord         integer NOT NULL,         -- the change's place in it
    tbl         text NOT NULL,            -- "schema"."table" at the time
    op          text NOT NULL,
    pk          jsonb,
    data        jsonb,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (destination, lsn, ord)
);
ALTER TABLE tributary.dead_letters ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS dead_letters_readable ON tributary.dead_letters;
CREATE POLICY dead_letters_readable ON tributary.dead_letters
    FOR SELECT USING (to_regclass(tbl) IS NOT NULL AND has_table_privilege(to_regclass(tbl), 'SELECT'));
DROP POLICY IF EXISTS dead_letters_writable ON tributary.dead_letters;
CREATE POLICY dead_letters_writable ON tributary.dead_letters
    FOR INSERT WITH CHECK (true);
SELECT pg_catalog.pg_extension_config_dump('tributary.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.dead_letters_id_seq', '');
CREATE OR REPLACE VIEW @extschema@.sync_dead_letters WITH (security_invoker = true) AS
    SELECT d.id, d.destination, d.lsn, d.ord, d.tbl, d.op, d.pk, d.data, d.error, d.attempts, d.at
    FROM tributary.dead_letters d;
COMMENT ON VIEW @extschema@.sync_dead_letters IS
  'Hub changes a peer refused max_attempts times, set aside so that its stream goes on.';
CREATE OR REPLACE FUNCTION @extschema@.sync_worker_grant(worker regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE q record;
BEGIN
    IF worker IS NULL THEN
        PERFORM tributary._raise('22023', 'worker role is NULL', 'Got NULL.', 'Pass the worker''s role name.');
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA tributary TO %s', worker);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON tributary.worker_progress TO %s', worker);
    EXECUTE format('GRANT SELECT ON tributary.queues TO %s', worker);
    EXECUTE format('GRANT SELECT, INSERT ON tributary.dead_letters TO %s', worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.sync_apply(regclass, jsonb, text) TO %s', worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tributary._emit_writeback(text) TO %s', worker);
    FOR q IN SELECT relid FROM tributary.queues LOOP
        EXECUTE format('GRANT SELECT, INSERT ON %s TO %s', q.relid::regclass, worker);
    END LOOP;
    -- The initial copy of a new peer reads the tracked tables.
    FOR q IN SELECT t.relid, n.nspname FROM tributary.tracked t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.active LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', q.nspname, worker);
        -- SELECT for the initial copy; writing for sync_apply of the
        -- peers' own changes.
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s', q.relid::regclass, worker);
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.sync_worker_grant(regrole) IS
    'Grant a (LOGIN REPLICATION) role what the tributary worker needs. Re-run after sync_queue_create.';

-- sync_retry_pending no longer runs the PL/pgSQL replay.
DROP FUNCTION IF EXISTS tributary._retry_pending(regclass);

-- 7. Grants of the new and re-created objects.
REVOKE ALL ON FUNCTION @extschema@.sync_set_peer(text, integer, regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION tributary._replay_parked(regclass), tributary._close_conflict(bigint, text),
                       tributary._on_delete() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._replay_parked(regclass), tributary._close_conflict(bigint, text) TO PUBLIC;
GRANT SELECT ON tributary.dead_letters, @extschema@.sync_dead_letters TO PUBLIC;
