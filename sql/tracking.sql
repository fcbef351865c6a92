-- Change tracking: sync_track / sync_untrack and the triggers they install.
-- The hot INSERT/UPDATE trigger is tributary.row_trigger (Rust); deletes,
-- key changes and truncates are rarer and handled here.

-- What is added to this cluster's xids to make the versions readers see:
-- 0, until a restore from another cluster is adopted (sync_restored).
CREATE FUNCTION tributary._version_offset() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce((SELECT version_offset FROM tributary.restores ORDER BY id DESC LIMIT 1), 0) $$;

-- This cluster and database, as 'system identifier/database OID' (the
-- worker names a hub the same way).
CREATE FUNCTION tributary._hub_identity() RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT (SELECT system_identifier FROM pg_control_system())::text || '/'
             || (SELECT oid FROM pg_database WHERE datname = current_database())::text $$;

-- The version a reader may safely ask up to: every transaction with a lower
-- top-level xid has finished (committed or aborted). It is the xmin of the
-- caller's snapshot, so a later read in any isolation level sees all of it
-- (plus the offset of an adopted restore).
CREATE FUNCTION sync_current_version() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint + tributary._version_offset() $$;
COMMENT ON FUNCTION sync_current_version() IS
  'Every change stamped below this version is final. Store it and pass it as since next time.';

CREATE FUNCTION tributary._xid() RETURNS bigint
LANGUAGE sql VOLATILE
AS $$ SELECT pg_current_xact_id()::text::bigint $$;

-- Raises a Tributary error. All user-facing errors go through here so that
-- every one has a SQLSTATE, a message, a DETAIL and a HINT.
CREATE FUNCTION tributary._raise(code text, msg text, detail text, hint text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = code, MESSAGE = msg, DETAIL = detail, HINT = hint; END $$;

-- The primary key columns of a table, in key order.
CREATE FUNCTION tributary._pk_columns(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
AS $$
    SELECT array_agg(a.attname::text ORDER BY k.ord)
    FROM pg_index i
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = tbl AND i.indisprimary
$$;

-- The tracked-table row, or an error naming the table.
CREATE FUNCTION tributary._tracked(tbl regclass) RETURNS tributary.tracked
LANGUAGE plpgsql STABLE
AS $$
DECLARE t tributary.tracked;
BEGIN
    IF tbl IS NULL THEN
        PERFORM tributary._raise('22004', 'table must not be NULL',
            'A NULL regclass was passed.', 'Pass a tracked table, e.g. ''public.orders''.');
    END IF;
    SELECT * INTO t FROM tributary.tracked WHERE relid = tbl AND active;
    IF NOT FOUND THEN
        PERFORM tributary._raise('TB003', format('table %s is not tracked', tbl),
            format('Table %s has no active change tracking.', tbl),
            format('Run SELECT sync_track(%L) first, or see sync_tracked_tables().', tbl::text));
    END IF;
    RETURN t;
END $$;

-- Tombstones: tributary._on_delete, a BEFORE row trigger in Rust
-- (extension/src/api/tombstone.rs). It builds the row's image as the
-- deleting role and writes tributary.tombstones as the extension's owner.

-- A DELETE row message of pgoutput carries only the key, not sync_origin. So
-- that the worker never echoes a peer's delete back to that peer, a DELETE
-- statement run under tributary.origin brackets its rows with transactional
-- logical messages: 'tributary.origin' = <origin> before, '' after. The
-- worker tags the deletes in between with that origin. A DELETE run by a
-- trigger inside it (an ON DELETE CASCADE, depth > 1) is the hub's own doing,
-- which the peer must receive: it is bracketed the other way round, '' before
-- and <origin> again after.
-- SECURITY DEFINER: pg_logical_emit_message is not granted to PUBLIC; this
-- only emits the caller's own tributary.origin, which a session may set only
-- to a peer its role may speak for (the setting's check hook).
CREATE FUNCTION tributary._delete_origin() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE o text := coalesce(current_setting('tributary.origin', true), '');
BEGIN
    IF o <> '' THEN
        PERFORM pg_logical_emit_message(true, 'tributary.origin',
            CASE WHEN (TG_WHEN = 'BEFORE') = (pg_trigger_depth() = 1) THEN o ELSE '' END);
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE deletes rows without tombstones, so every reader older than it
-- must resync in full: raise the table's minimum valid version past it.
CREATE FUNCTION tributary._on_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tributary.tracked
       SET min_valid = greatest(min_valid, pg_current_xact_id()::text::bigint + 1),
           min_valid_reason = 'truncate'
     WHERE relid = TG_RELID AND active;
    -- Tombstones stay: deletes committed just before the truncate may still
    -- be owed to readers whose version is already past it.
    RETURN NULL;
END $$;

-- The tracking triggers of a table, for its primary key `pk`: dropped and
-- made again, so that a changed key (or a renamed key column) is picked up.
-- Run by sync_track, by sync_set_filter, and by the DDL event trigger after
-- an ALTER TABLE. A table with a row filter also gets zzz_tributary_moves,
-- and its delete trigger keeps the image of a tombstone it overwrites (the
-- argument '' after the key columns): see tributary.moves.
CREATE FUNCTION tributary._install_triggers(tbl regclass, pk text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pk_cond text;
    f tributary.filters;
    keys text := (SELECT string_agg(quote_literal(c), ', ') FROM unnest(pk) c);
BEGIN
    -- Triggers: dropped and recreated so that a changed key is picked up.
    -- The row trigger is named to fire after the application's own BEFORE
    -- triggers (they fire in name order), so it sees their final values.
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_track ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_rekey ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_origin_on ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_origin_off ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_moves ON %s', tbl);
    SELECT * INTO f FROM tributary.filters x WHERE x.relid = tbl AND x.filter IS NOT NULL;
    IF f.filter IS NOT NULL THEN
        keys := keys || ', ''''';
    END IF;
    -- Tables with the last_writer_wins policy stamp a clock on local writes.
    EXECUTE format('CREATE TRIGGER zzz_tributary_track BEFORE INSERT OR UPDATE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary.row_trigger(%s)', tbl,
                   CASE WHEN EXISTS (SELECT 1 FROM tributary.policies p WHERE p.relid = tbl AND p.policy = 'last_writer_wins')
                        THEN '''lww''' ELSE '' END);
    EXECUTE format('CREATE TRIGGER zzz_tributary_delete BEFORE DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary._on_delete(%s)', tbl, keys);
    SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ') INTO pk_cond FROM unnest(pk) c;
    EXECUTE format('CREATE TRIGGER zzz_tributary_rekey BEFORE UPDATE ON %s
                    FOR EACH ROW WHEN (%s) EXECUTE FUNCTION tributary._on_delete(%s)', tbl, pk_cond, keys);
    EXECUTE format('CREATE TRIGGER zzz_tributary_truncate BEFORE TRUNCATE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION tributary._on_truncate()', tbl);
    EXECUTE format('CREATE TRIGGER zzz_tributary_origin_on BEFORE DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION tributary._delete_origin()', tbl);
    EXECUTE format('CREATE TRIGGER zzz_tributary_origin_off AFTER DELETE ON %s
                    FOR EACH STATEMENT EXECUTE FUNCTION tributary._delete_origin()', tbl);
    -- ALWAYS: changes applied with session_replication_role = replica are
    -- changes too, and must never be skipped.
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_tributary_track,
                                   ENABLE ALWAYS TRIGGER zzz_tributary_delete,
                                   ENABLE ALWAYS TRIGGER zzz_tributary_rekey,
                                   ENABLE ALWAYS TRIGGER zzz_tributary_truncate,
                                   ENABLE ALWAYS TRIGGER zzz_tributary_origin_on,
                                   ENABLE ALWAYS TRIGGER zzz_tributary_origin_off', tbl);
    -- Where rows were: an update that changes what the filter reads records
    -- the values before it (tributary._on_move: the number of key columns,
    -- the key columns, the filter's columns). Only on filtered tables, so
    -- that the others' writes cost what they did.
    IF f.filter IS NOT NULL AND cardinality(f.columns) > 0 THEN
        EXECUTE format('CREATE TRIGGER zzz_tributary_moves AFTER UPDATE OF %s ON %s
                        FOR EACH ROW WHEN (%s) EXECUTE FUNCTION tributary._on_move(%L, %s, %s)',
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(f.columns) c), tbl,
                       (SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ') FROM unnest(f.columns) c),
                       cardinality(pk), (SELECT string_agg(quote_literal(c), ', ') FROM unnest(pk) c),
                       (SELECT string_agg(quote_literal(c), ', ') FROM unnest(f.columns) c));
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_tributary_moves', tbl);
    END IF;
END $$;

CREATE FUNCTION sync_track(tbl regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE
    pk text[];
    reserved record;
    x bigint := tributary._xid();
    prev tributary.tracked;
    rel record;
BEGIN
    IF tbl IS NULL THEN
        PERFORM tributary._raise('22004', 'table must not be NULL',
            'A NULL regclass was passed.', 'Pass the table to track, e.g. ''public.orders''.');
    END IF;
    SELECT c.relkind, c.relpersistence INTO rel FROM pg_class c WHERE c.oid = tbl;
    IF rel.relkind NOT IN ('r', 'p') THEN
        PERFORM tributary._raise('42809', format('%s is not a table', tbl),
            format('Relation %s has relkind %L; only ordinary and partitioned tables can be tracked.', tbl, rel.relkind),
            'Track the underlying table instead.');
    END IF;
    IF rel.relpersistence = 't' THEN
        PERFORM tributary._raise('42809', format('%s is a temporary table', tbl),
            'Temporary tables are private to one session and cannot be synced.', 'Track a permanent table.');
    END IF;

    -- Take the lock first so the key and columns cannot change under us.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);

    pk := tributary._pk_columns(tbl);
    IF pk IS NULL THEN
        PERFORM tributary._raise('TB004', format('table %s has no primary key', tbl),
            format('Table %s cannot be tracked: changes are identified by primary key.', tbl),
            format('Add one, e.g. ALTER TABLE %s ADD PRIMARY KEY (id).', tbl));
    END IF;

    -- The tracking columns must be ours if they exist already.
    FOR reserved IN
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS have, w.want
        FROM (VALUES ('sync_version', 'bigint'), ('sync_xid', 'bigint'), ('sync_created_xid', 'bigint'),
                     ('sync_origin', 'text'), ('sync_colmeta', 'bytea')) AS w(name, want)
        JOIN pg_attribute a ON a.attrelid = tbl AND a.attname = w.name AND NOT a.attisdropped
        WHERE format_type(a.atttypid, a.atttypmod) <> w.want
    LOOP
        PERFORM tributary._raise('42701', format('column %I of %s is reserved by Tributary', reserved.attname, tbl),
            format('It has type %s; Tributary needs %s.', reserved.have, reserved.want),
            format('Rename the column, e.g. ALTER TABLE %s RENAME COLUMN %I TO %I.', tbl, reserved.attname, reserved.attname || '_app'));
    END LOOP;

    -- Existing rows get the tracking xid as their stamp without a table
    -- rewrite (constant defaults are stored once in the catalog).
    EXECUTE format(
        'ALTER TABLE %s
            ADD COLUMN IF NOT EXISTS sync_version bigint NOT NULL DEFAULT 1,
            ADD COLUMN IF NOT EXISTS sync_xid bigint NOT NULL DEFAULT %s,
            ADD COLUMN IF NOT EXISTS sync_created_xid bigint NOT NULL DEFAULT %s,
            ADD COLUMN IF NOT EXISTS sync_origin text,
            ADD COLUMN IF NOT EXISTS sync_colmeta bytea', tbl, x, x);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN sync_xid DROP DEFAULT, ALTER COLUMN sync_created_xid DROP DEFAULT', tbl);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s (sync_xid)', 'sync_xid_' || tbl::oid, tbl);

    PERFORM tributary._install_triggers(tbl, pk);

    -- The publication the worker reads.
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'tributary') THEN
        CREATE PUBLICATION tributary;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                   WHERE p.pubname = 'tributary' AND pr.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION tributary ADD TABLE %s', tbl);
    END IF;

    SELECT * INTO prev FROM tributary.tracked WHERE relid = tbl;
    IF NOT FOUND THEN
        INSERT INTO tributary.tracked (relid, pk_columns, tracked_xid) VALUES (tbl, pk, x);
    ELSIF prev.active THEN
        UPDATE tributary.tracked SET pk_columns = pk WHERE relid = tbl;
    ELSE
        -- Tracked before: readers may hold rows from that epoch, and deletes
        -- made while untracked left no tombstones. They must resync.
        UPDATE tributary.tracked
           SET pk_columns = pk, active = true, tracked_xid = x, tracked_at = now(),
               min_valid = greatest(min_valid, x + 1), min_valid_reason = 'retrack'
         WHERE relid = tbl;
    END IF;
    -- The shape peers know the table by: the DDL guard compares against it.
    -- The cluster its stamps are of: a restore elsewhere is told by it.
    UPDATE tributary.tracked SET shape = tributary._shape(tbl), hub = tributary._hub_identity()
     WHERE relid = tbl;
END $$;
COMMENT ON FUNCTION sync_track(regclass) IS
  'Start change tracking on a table with a primary key. Idempotent.';

CREATE FUNCTION sync_untrack(tbl regclass, drop_columns boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
BEGIN
    PERFORM tributary._tracked(tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_track ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_delete ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_rekey ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_truncate ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_origin_on ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_origin_off ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_moves ON %s', tbl);
    IF EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
               WHERE p.pubname = 'tributary' AND pr.prrelid = tbl) THEN
        EXECUTE format('ALTER PUBLICATION tributary DROP TABLE %s', tbl);
    END IF;
    -- Inactive first: the DDL event trigger guards the tracking columns of
    -- active tables only.
    UPDATE tributary.tracked SET active = false WHERE relid = tbl;
    IF drop_columns THEN
        EXECUTE format('ALTER TABLE %s DROP COLUMN IF EXISTS sync_version, DROP COLUMN IF EXISTS sync_xid,
                        DROP COLUMN IF EXISTS sync_created_xid, DROP COLUMN IF EXISTS sync_origin,
                        DROP COLUMN IF EXISTS sync_colmeta', tbl);
    END IF;
    DELETE FROM tributary.tombstones WHERE relid = tbl;
    DELETE FROM tributary.moves WHERE relid = tbl;
    DELETE FROM tributary.filters WHERE relid = tbl;
END $$;
COMMENT ON FUNCTION sync_untrack(regclass, boolean) IS
  'Stop change tracking. Readers of the table must resync in full if it is tracked again.';

CREATE FUNCTION sync_tracked_tables()
RETURNS TABLE (tbl regclass, pk_columns text[], tracked_since bigint, min_valid_version bigint,
               min_valid_reason text, tracked_at timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT t.relid::regclass, t.pk_columns, t.tracked_xid + o.v, t.min_valid + o.v, t.min_valid_reason, t.tracked_at
    FROM tributary.tracked t, (SELECT tributary._version_offset() AS v) o WHERE t.active ORDER BY t.relid
$$;

CREATE FUNCTION sync_min_valid_version(tbl regclass) RETURNS bigint
LANGUAGE sql STABLE
AS $$ SELECT (tributary._tracked(tbl)).min_valid + tributary._version_offset() $$;
COMMENT ON FUNCTION sync_min_valid_version(regclass) IS
  'The oldest version from which a diff of this table can still be served; below it, resync in full.';

-- A dropped table takes its tracking state with it.
CREATE FUNCTION tributary._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE o record;
BEGIN
    FOR o IN SELECT objid FROM pg_event_trigger_dropped_objects()
             WHERE object_type = 'table' AND classid = 'pg_class'::regclass LOOP
        DELETE FROM tributary.tombstones WHERE relid = o.objid;
        DELETE FROM tributary.tracked WHERE relid = o.objid;
        DELETE FROM tributary.policies WHERE relid = o.objid;
        DELETE FROM tributary.pending WHERE relid = o.objid;
        DELETE FROM tributary.schema_changes WHERE relid = o.objid;
        DELETE FROM tributary.filters WHERE relid = o.objid;
        DELETE FROM tributary.moves WHERE relid = o.objid;
    END LOOP;
END $$;
CREATE EVENT TRIGGER tributary_sql_drop ON sql_drop EXECUTE FUNCTION tributary._on_sql_drop();

-- The shape of a tracked table as peers hold it: its name, its data columns
-- by attribute number (a rename keeps the number, a drop and re-add does
-- not) with their types, and the attribute numbers of its primary key.
CREATE FUNCTION tributary._shape(rel oid) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
        'schema', n.nspname::text,
        'table', c.relname::text,
        'columns', coalesce((SELECT jsonb_agg(jsonb_build_array(a.attnum, a.attname::text,
                                                                 format_type(a.atttypid, a.atttypmod))
                                              ORDER BY a.attnum)
                               FROM pg_attribute a
                              WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                                AND a.attname <> ALL ('{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[])),
                            '[]'::jsonb),
        'key', coalesce((SELECT jsonb_agg(k.attnum ORDER BY k.ord)
                           FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                          WHERE i.indrelid = rel AND i.indisprimary), '[]'::jsonb))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;

-- After an ALTER TABLE of a tracked table: tracking follows what it can,
-- and refuses what it cannot (the error aborts the ALTER TABLE, so nothing
-- is left half-changed).
--   the primary key changed, or a key column was renamed -> the key is found
--       again by what it is (the primary key), recorded, and the triggers
--       that name it are made again;
--   no primary key any more, or a tracking column dropped, renamed or
--       retyped -> TB007, with what to do instead;
--   the shape peers hold changed (a column renamed, dropped, added or
--       retyped, the table renamed or moved, the key changed) -> a row in
--       tributary.schema_changes and, in the same transaction, a
--       'tributary.ddl' logical message: the worker makes its peers follow
--       at that point of the stream.
-- Returns the statement that re-sends every row (NULL: none needed), for
-- the caller to run as the user who altered the table: after a change of
-- type or key, or a column added with values, every row's values changed
-- without a row change, so each row gets a new revision and reaches every
-- reader and peer again.
-- SECURITY DEFINER: only the extension writes tributary.tracked. It calls
-- no user code, and only records what the catalog says, so any role may run
-- it (the event trigger runs it as whoever altered the table).
CREATE FUNCTION tributary._follow_ddl(rel oid) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t tributary.tracked;
    pk text[];
    missing text;
    was jsonb;
    now_ jsonb;
    renamed jsonb;
    dropped text[];
    added text[];
    retyped text[];
    rekeyed boolean;
    moved boolean;
    f tributary.filters;
    gone text;
    became text;
    refill boolean;
    change_id bigint;
BEGIN
    SELECT * INTO t FROM tributary.tracked WHERE relid = rel AND active;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT w.name INTO missing
      FROM unnest(ARRAY['sync_version', 'sync_xid', 'sync_created_xid', 'sync_origin', 'sync_colmeta'],
                  ARRAY['bigint', 'bigint', 'bigint', 'text', 'bytea']) AS w(name, want)
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                        WHERE a.attrelid = rel AND a.attname = w.name AND NOT a.attisdropped
                          AND format_type(a.atttypid, a.atttypmod) = w.want)
     LIMIT 1;
    IF missing IS NOT NULL THEN
        PERFORM tributary._raise('TB007',
            format('column %I of tracked table %s is Tributary''s', missing, rel::regclass),
            format('Tracking needs column %I (as it was) to follow %s; the change was refused.', missing, rel::regclass),
            format('To change it, stop tracking first: SELECT sync_untrack(%L).', rel::regclass::text));
    END IF;
    pk := tributary._pk_columns(rel);
    IF pk IS NULL THEN
        PERFORM tributary._raise('TB007',
            format('tracked table %s would have no primary key', rel::regclass),
            format('Changes of %s are identified by its primary key (%s); the change was refused.',
                   rel::regclass, array_to_string(t.pk_columns, ', ')),
            'Change the key in one statement, e.g. ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (other); or stop tracking first with sync_untrack.');
    END IF;
    now_ := tributary._shape(rel);
    was := coalesce(t.shape, now_);
    -- Recorded before the triggers are made again: that runs an ALTER TABLE
    -- of its own, which comes back here and must find nothing left to do.
    UPDATE tributary.tracked SET pk_columns = pk, shape = now_ WHERE relid = rel;
    IF pk IS DISTINCT FROM t.pk_columns THEN
        PERFORM tributary._install_triggers(rel::regclass, pk);
    END IF;
    IF was = now_ THEN
        RETURN NULL;
    END IF;
    WITH o AS (SELECT (e ->> 0)::int AS n, e ->> 1 AS name, e ->> 2 AS type FROM jsonb_array_elements(was -> 'columns') e),
         w AS (SELECT (e ->> 0)::int AS n, e ->> 1 AS name, e ->> 2 AS type FROM jsonb_array_elements(now_ -> 'columns') e)
    SELECT (SELECT coalesce(jsonb_agg(jsonb_build_array(o.name, w.name) ORDER BY o.n), '[]'::jsonb)
              FROM o JOIN w USING (n) WHERE o.name <> w.name),
           (SELECT coalesce(array_agg(o.name ORDER BY o.n), '{}') FROM o WHERE NOT EXISTS (SELECT 1 FROM w WHERE w.n = o.n)),
           (SELECT coalesce(array_agg(w.name ORDER BY w.n), '{}') FROM w WHERE NOT EXISTS (SELECT 1 FROM o WHERE o.n = w.n)),
           (SELECT coalesce(array_agg(w.name ORDER BY w.n), '{}') FROM o JOIN w USING (n) WHERE o.type <> w.type)
      INTO renamed, dropped, added, retyped;
    -- A filter names its columns: renaming or dropping one (a drop needs
    -- CASCADE, past zzz_tributary_moves) would leave it naming nothing.
    SELECT * INTO f FROM tributary.filters x WHERE x.relid = rel AND x.filter IS NOT NULL;
    SELECT r ->> 0, r ->> 1 INTO gone, became
      FROM jsonb_array_elements(renamed) r WHERE r ->> 0 = ANY (f.columns) LIMIT 1;
    IF gone IS NULL THEN
        SELECT c INTO gone FROM unnest(dropped) c WHERE c = ANY (f.columns) LIMIT 1;
    END IF;
    IF gone IS NOT NULL THEN
        PERFORM tributary._raise('TB007',
            format('column %I of %s is read by its row filter', gone, rel::regclass),
            format('The filter of %s (%s) reads %I: %s would leave it naming a column that is not there. The change was refused.',
                   rel::regclass, f.filter, gone,
                   CASE WHEN became IS NOT NULL THEN format('renaming it to %I', became) ELSE 'dropping it' END),
            format('Change the filter first, e.g. SELECT sync_set_filter(%L, <a filter without %I>), or remove it with sync_set_filter(%L, NULL); then alter the table.',
                   rel::regclass::text, gone, rel::regclass::text));
    END IF;
    rekeyed := was -> 'key' IS DISTINCT FROM now_ -> 'key';
    moved := (was ->> 'schema', was ->> 'table') IS DISTINCT FROM (now_ ->> 'schema', now_ ->> 'table');
    refill := rekeyed OR cardinality(retyped) > 0;
    IF NOT refill AND cardinality(added) > 0 THEN
        -- A column added with a default (or a generated one) gave every row
        -- a value without a row change.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %s WHERE %s)', rel::regclass,
                       (SELECT string_agg(format('%I IS NOT NULL', c), ' OR ') FROM unnest(added) c))
           INTO refill;
    END IF;

    INSERT INTO tributary.schema_changes
           (relid, xid, from_schema, from_table, to_schema, to_table, renamed, dropped, added, retyped, rekeyed, refill)
    VALUES (rel, pg_current_xact_id()::text::bigint, was ->> 'schema', was ->> 'table', now_ ->> 'schema',
            now_ ->> 'table', renamed, dropped, added, retyped, rekeyed, refill)
    RETURNING id INTO change_id;
    PERFORM pg_logical_emit_message(true, 'tributary.ddl', jsonb_build_object(
        'id', change_id, 'oid', rel::bigint,
        'from', jsonb_build_array(was ->> 'schema', was ->> 'table'),
        'to', jsonb_build_array(now_ ->> 'schema', now_ ->> 'table'),
        'columns', (SELECT jsonb_agg(jsonb_build_array(a.attname::text, a.atttypid::bigint,
                                                       a.attnum = ANY (i.indkey)) ORDER BY a.attnum)
                      FROM pg_attribute a JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
                     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attname <> ALL ('{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[])),
        'renamed', renamed, 'dropped', to_jsonb(dropped), 'added', to_jsonb(added),
        'retyped', to_jsonb(retyped), 'rekeyed', rekeyed, 'refill', refill)::text);
    IF refill THEN
        RETURN format('UPDATE ONLY %s SET %I = %I', rel::regclass, pk[1], pk[1]);
    END IF;
    RETURN NULL;
END $$;

-- The event trigger runs as the user who altered the table: the re-send
-- (an UPDATE of every row) fires that table's own triggers, so it must not
-- run with the extension's rights.
CREATE FUNCTION tributary._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    refill text;
BEGIN
    FOR cmd IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass LOOP
        refill := tributary._follow_ddl(cmd.objid);
        IF refill IS NOT NULL THEN
            EXECUTE refill;
        END IF;
    END LOOP;
END $$;
CREATE EVENT TRIGGER tributary_ddl_end ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION tributary._on_ddl_end();

-- Retention: purge tombstones and moves (tributary.moves, of filtered
-- tables) older than tributary.retention and raise each table's minimum
-- valid version past the newest purged one, so no reader is ever handed a
-- diff with a hole in it, nor a scoped reader one without the deletes it
-- is owed.
CREATE FUNCTION sync_cleanup() RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    keep interval;
    cutoff timestamptz;
    purged bigint := 0;
    n bigint;
    r record;
BEGIN
    BEGIN
        keep := current_setting('tributary.retention')::interval;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR syntax_error THEN
        PERFORM tributary._raise('22023', 'tributary.retention is not a valid interval',
            format('tributary.retention = %L.', current_setting('tributary.retention')),
            'Set it to an interval, e.g. SET tributary.retention = ''7 days''.');
    END;
    IF keep < interval '0' THEN
        PERFORM tributary._raise('22023', 'tributary.retention must not be negative',
            format('tributary.retention = %L.', keep), 'Use a positive interval, e.g. ''7 days''.');
    END IF;
    cutoff := now() - keep;
    FOR r IN SELECT h.relid, max(h.horizon) AS horizon
               FROM (SELECT ts.relid, max(ts.xid) + 1 AS horizon
                       FROM tributary.tombstones ts WHERE ts.deleted_at < cutoff GROUP BY ts.relid
                     UNION ALL
                     SELECT m.relid, max(m.xid) + 1
                       FROM tributary.moves m WHERE m.moved_at < cutoff GROUP BY m.relid) AS h
              GROUP BY h.relid LOOP
        DELETE FROM tributary.tombstones WHERE relid = r.relid AND xid < r.horizon;
        GET DIAGNOSTICS n = ROW_COUNT;
        purged := purged + n;
        DELETE FROM tributary.moves WHERE relid = r.relid AND xid < r.horizon;
        GET DIAGNOSTICS n = ROW_COUNT;
        purged := purged + n;
        UPDATE tributary.tracked
           SET min_valid = r.horizon, min_valid_reason = 'retention'
         WHERE relid = r.relid AND min_valid < r.horizon;
    END LOOP;
    RETURN purged;
END $$;
COMMENT ON FUNCTION sync_cleanup() IS
  'Purge tombstones and moves older than tributary.retention; returns rows purged and raises min valid versions.';

-- What holds the version back: every transaction that has an xid, oldest
-- first. The first row is the one the current version waits for.
CREATE FUNCTION sync_version_lag()
RETURNS TABLE (current_version bigint, next_xid bigint, held_back_by bigint, kind text, pid integer,
               usename name, application_name text, state text, xact_start timestamptz,
               xact_age interval, query text)
LANGUAGE sql STABLE
AS $$
    WITH v AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS cur,
                      pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nxt),
    holders AS (
        SELECT 'backend'::text AS kind, a.pid, a.usename, a.application_name, a.state, a.xact_start,
               a.query, a.backend_xid AS x
        FROM pg_stat_activity a WHERE a.backend_xid IS NOT NULL
        UNION ALL
        SELECT 'prepared', NULL, p.owner, p.gid, 'prepared', p.prepared, NULL, p.transaction
        FROM pg_prepared_xacts p
    )
    SELECT v.cur + tributary._version_offset(), v.nxt,
           -- widen the 32-bit xid with the epoch of the current version: a
           -- running xid is never below it, so a smaller value has wrapped
           ((v.cur >> 32) << 32) + h.x::text::bigint
             + CASE WHEN h.x::text::bigint < (v.cur & 4294967295) THEN 4294967296 ELSE 0 END,
           h.kind, h.pid, h.usename, h.application_name, h.state, h.xact_start,
           now() - h.xact_start, h.query
    FROM v LEFT JOIN holders h ON true
    ORDER BY 3 NULLS LAST
$$;
COMMENT ON FUNCTION sync_version_lag() IS
  'Transactions holding sync_current_version() back, oldest first. Only they delay delivery.';

-- After pg_restore into another cluster (or database): xids, and so the
-- versions readers hold, belong to the cluster the dump came from. Readers
-- get TB008 until a superuser runs this once. It
--   * stamps the restored rows and tombstones with the current xid where
--     theirs is above it (they would come back in later windows otherwise),
--     with the tracking trigger off and session_replication_role = replica
--     (no user trigger fires, no revision moves);
--   * raises every restored table's min_valid past that xid (reason
--     'restore'), so a reader's next diff is a full resync;
--   * for a table with a row filter: the filter's stamp likewise, and its
--     moves dropped (they tell where rows were before the restore, which
--     every reader resyncs past);
--   * records an offset that puts every version of this cluster above every
--     version the old one handed out: the highest restored stamp + 2^40
--     (the old cluster would have to run 2^40 more transactions before its
--     readers' versions reached ours).
-- Returns how many tables it adopted; 0 when there was nothing to do.
CREATE FUNCTION sync_restored() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE
    live text := tributary._hub_identity();
    now_xid bigint := tributary._xid();
    highest bigint := 0;
    stamp bigint;
    t tributary.tracked;
    n bigint := 0;
    role_before text := current_setting('session_replication_role');
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        PERFORM tributary._raise('42501', 'sync_restored() must be run by a superuser',
            format('Role %I is not a superuser.', current_user),
            'It rewrites every tracked table''s stamps with triggers off; run it as the role that ran pg_restore.');
    END IF;
    PERFORM set_config('session_replication_role', 'replica', true);
    FOR t IN SELECT * FROM tributary.tracked WHERE hub IS DISTINCT FROM live ORDER BY relid LOOP
        highest := greatest(highest, t.min_valid, t.tracked_xid);
        IF t.active THEN
            EXECUTE format('SELECT max(greatest(sync_xid, sync_created_xid)) FROM ONLY %s', t.relid) INTO stamp;
            highest := greatest(highest, coalesce(stamp, 0));
            EXECUTE format('ALTER TABLE %s DISABLE TRIGGER zzz_tributary_track', t.relid);
            EXECUTE format('UPDATE ONLY %s SET sync_xid = least(sync_xid, $1), sync_created_xid = least(sync_created_xid, $1)
                             WHERE sync_xid > $1 OR sync_created_xid > $1', t.relid) USING now_xid;
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_tributary_track', t.relid);
        END IF;
        SELECT max(xid) INTO stamp FROM tributary.tombstones WHERE relid = t.relid;
        highest := greatest(highest, coalesce(stamp, 0));
        UPDATE tributary.tombstones SET xid = now_xid WHERE relid = t.relid AND xid > now_xid;
        UPDATE tributary.filters SET since_xid = now_xid WHERE relid = t.relid AND since_xid > now_xid;
        DELETE FROM tributary.moves WHERE relid = t.relid;
        UPDATE tributary.tracked
           SET hub = live, min_valid = now_xid + 1, min_valid_reason = 'restore'
         WHERE relid = t.relid;
        n := n + 1;
    END LOOP;
    PERFORM set_config('session_replication_role', role_before, true);
    IF n > 0 THEN
        INSERT INTO tributary.restores (hub, restored_xid, version_offset)
        VALUES (live, now_xid, tributary._version_offset() + highest + (1::bigint << 40) - now_xid);
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION sync_restored() IS
  'Adopt a restore from another cluster: restamp, raise min_valid (readers resync), offset versions. Idempotent.';
