-- Tributary 0.3.0 -> 0.4.0. Run by ALTER EXTENSION tributary UPDATE; every
-- step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.4.0'" to load this file. \quit

-- 1. Each tracked table remembers the shape its peers hold (name, columns
--    by attribute number, key), so that a later ALTER TABLE can tell a
--    rename from a drop and an add; and the cluster its stamps are of, so
--    that a restore into another cluster is told.
ALTER TABLE tributary.tracked ADD COLUMN IF NOT EXISTS shape jsonb;
ALTER TABLE tributary.tracked ADD COLUMN IF NOT EXISTS hub text;
CREATE OR REPLACE FUNCTION tributary._shape(rel oid) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION tributary._hub_identity() RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT (SELECT system_identifier FROM pg_control_system())::text || '/'
             || (SELECT oid FROM pg_database WHERE datname = current_database())::text $$;
REVOKE ALL ON FUNCTION tributary._shape(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION tributary._hub_identity() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._hub_identity() TO PUBLIC;
UPDATE tributary.tracked SET shape = tributary._shape(relid) WHERE active AND shape IS NULL;
UPDATE tributary.tracked SET hub = tributary._hub_identity() WHERE hub IS NULL;

-- 2. The log of those changes of shape: the worker reads it to tell an
--    outbox edit its peer made before a change it has not followed yet from
--    one naming what never existed.
CREATE TABLE IF NOT EXISTS tributary.schema_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid       oid NOT NULL,
    xid         bigint NOT NULL,
    from_schema text NOT NULL,
    from_table  text NOT NULL,
    to_schema   text NOT NULL,
    to_table    text NOT NULL,
    renamed     jsonb NOT NULL,      -- [[old, new], ...]
    dropped     text[] NOT NULL,
    added       text[] NOT NULL,
    retyped     text[] NOT NULL,
    rekeyed     boolean NOT NULL,    -- the primary key is other columns now
    refill      boolean NOT NULL,    -- every row was sent again after it
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS schema_changes_from ON tributary.schema_changes (from_schema, from_table);
ALTER TABLE tributary.schema_changes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS schema_changes_readable ON tributary.schema_changes;
CREATE POLICY schema_changes_readable ON tributary.schema_changes
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
GRANT SELECT ON tributary.schema_changes TO PUBLIC;  -- row-level security applies

-- 3. The DDL guard records each change of shape, tells the worker with a
--    'tributary.ddl' logical message, and has every row sent again after a
--    change of type or key or a column added with values. The bookkeeping is
--    tributary._follow_ddl (SECURITY DEFINER, no user code); the event
--    trigger now runs as whoever altered the table, so that re-sending the
--    rows (an UPDATE that fires the table's own triggers) runs with their
--    rights, not the extension's.
CREATE OR REPLACE FUNCTION tributary._follow_ddl(rel oid) RETURNS text
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
REVOKE ALL ON FUNCTION tributary._follow_ddl(oid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._follow_ddl(oid) TO PUBLIC;
CREATE OR REPLACE FUNCTION tributary._on_ddl_end() RETURNS event_trigger
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
REVOKE ALL ON FUNCTION tributary._on_ddl_end() FROM PUBLIC;

-- 4. sync_track records the shape and the cluster when tracking starts.
CREATE OR REPLACE FUNCTION @extschema@.sync_track(tbl regclass) RETURNS void
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
COMMENT ON FUNCTION @extschema@.sync_track(regclass) IS
  'Start change tracking on a table with a primary key. Idempotent.';

-- 5. A dropped table takes its log of changes of shape with it.
CREATE OR REPLACE FUNCTION tributary._on_sql_drop() RETURNS event_trigger
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
    END LOOP;
END $$;

-- 6. Restores: sync_restored() adopts a restore from another cluster, and
--    versions carry the offset it records; until then readers get TB008.

CREATE TABLE IF NOT EXISTS tributary.restores (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hub            text NOT NULL,       -- the cluster that adopted the restore
    restored_xid   bigint NOT NULL,     -- its xid then: the restored rows' stamp
    version_offset bigint NOT NULL,
    adopted_at     timestamptz NOT NULL DEFAULT now()
);
SELECT pg_catalog.pg_extension_config_dump('tributary.restores', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.restores_id_seq', '');
GRANT SELECT ON tributary.restores TO PUBLIC;        -- the version offset readers' versions carry
CREATE OR REPLACE FUNCTION tributary._version_offset() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce((SELECT version_offset FROM tributary.restores ORDER BY id DESC LIMIT 1), 0) $$;
REVOKE ALL ON FUNCTION tributary._version_offset() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._version_offset() TO PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@.sync_current_version() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint + tributary._version_offset() $$;
COMMENT ON FUNCTION @extschema@.sync_current_version() IS
  'Every change stamped below this version is final. Store it and pass it as since next time.';

CREATE OR REPLACE FUNCTION @extschema@.sync_tracked_tables()
RETURNS TABLE (tbl regclass, pk_columns text[], tracked_since bigint, min_valid_version bigint,
               min_valid_reason text, tracked_at timestamptz)
LANGUAGE sql STABLE
AS $$
    SELECT t.relid::regclass, t.pk_columns, t.tracked_xid + o.v, t.min_valid + o.v, t.min_valid_reason, t.tracked_at
    FROM tributary.tracked t, (SELECT tributary._version_offset() AS v) o WHERE t.active ORDER BY t.relid
$$;

CREATE OR REPLACE FUNCTION @extschema@.sync_min_valid_version(tbl regclass) RETURNS bigint
LANGUAGE sql STABLE
AS $$ SELECT (tributary._tracked(tbl)).min_valid + tributary._version_offset() $$;
COMMENT ON FUNCTION @extschema@.sync_min_valid_version(regclass) IS
  'The oldest version from which a diff of this table can still be served; below it, resync in full.';

CREATE OR REPLACE FUNCTION @extschema@.sync_version_lag()
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
COMMENT ON FUNCTION @extschema@.sync_version_lag() IS
  'Transactions holding sync_current_version() back, oldest first. Only they delay delivery.';

CREATE OR REPLACE FUNCTION tributary._window_tables(since bigint, until bigint, tables regclass[])
RETURNS SETOF oid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    cur bigint := @extschema@.sync_current_version();
    off bigint := tributary._version_offset();
    live text := tributary._hub_identity();
    t regclass;
    tr tributary.tracked;
BEGIN
    IF since IS NULL THEN
        PERFORM tributary._raise('22004', 'since must not be NULL',
            'The version passed as since is NULL.',
            'Pass 0 for a first, full sync, or the version returned by your previous sync.');
    END IF;
    IF since < 0 OR until < 0 THEN
        PERFORM tributary._raise('22023', 'a version must not be negative',
            CASE WHEN since < 0 THEN format('since = %s.', since) ELSE format('until = %s.', until) END,
            'Versions come from sync_current_version(); 0 means a full sync.');
    END IF;
    IF since > cur OR until > cur THEN
        PERFORM tributary._raise('TB001', 'version is from the future',
            format('Asked for [%s, %s) but the current version is %s.', since, coalesce(until::text, 'current'), cur),
            'Only pass versions returned by sync_current_version() or sync_payload(); after a restore, resync in full.');
    END IF;
    IF until < since THEN
        PERFORM tributary._raise('TB005', 'until is before since',
            format('since = %s, until = %s.', since, until),
            'Pass until >= since, or NULL for the current version.');
    END IF;

    IF tables IS NOT NULL THEN
        FOREACH t IN ARRAY tables LOOP
            PERFORM tributary._tracked(t);
        END LOOP;
    END IF;

    FOR tr IN SELECT * FROM tributary.tracked
              WHERE active AND (tables IS NULL OR relid = ANY (tables::oid[]))
              ORDER BY relid LOOP
        IF tr.hub IS DISTINCT FROM live THEN
            PERFORM tributary._raise('TB008', format('table %s was restored from another cluster', tr.relid::regclass),
                format('Its versions were given out by hub %s; this is hub %s.', coalesce(tr.hub, 'unknown'), live),
                'A superuser runs SELECT sync_restored() once after the restore; readers then resync in full.');
        END IF;
        IF since > 0 AND since - off < tr.min_valid THEN
            PERFORM tributary._raise('TB002', format('version %s is too old for table %s', since, tr.relid::regclass),
                format('The oldest version a diff of %s can be served from is %s (reason: %s).',
                       tr.relid::regclass, tr.min_valid + off, coalesce(tr.min_valid_reason, 'tracking started')),
                format('Resync the table in full: sync_changes_since(0, tables => ARRAY[%L::regclass]) or sync_payload(%L, 0).',
                       tr.relid::regclass::text, tr.relid::regclass::text));
        END IF;
        RETURN NEXT tr.relid;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION @extschema@.sync_changes_since(
    since bigint,
    until bigint DEFAULT NULL,
    tables regclass[] DEFAULT NULL,
    skip_origin text DEFAULT NULL,
    page_size integer DEFAULT NULL,
    after_tbl regclass DEFAULT NULL,
    after_pk jsonb DEFAULT NULL)
RETURNS TABLE (tbl regclass, op text, pk jsonb, data json, row_version bigint, origin text,
               changed_columns text[])
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    upto bigint := coalesce(until, @extschema@.sync_current_version());
    off bigint := tributary._version_offset();
    rel oid;
    left_rows bigint := page_size;
    got bigint;
BEGIN
    IF page_size IS NOT NULL AND page_size < 1 THEN
        PERFORM tributary._raise('22023', 'page_size must be at least 1',
            format('page_size = %s.', page_size), 'Pass NULL for no paging, or a positive row count.');
    END IF;
    IF (after_tbl IS NULL) <> (after_pk IS NULL) THEN
        PERFORM tributary._raise('22023', 'after_tbl and after_pk go together',
            format('after_tbl = %s, after_pk = %s.', coalesce(after_tbl::text, 'NULL'), coalesce(after_pk::text, 'NULL')),
            'Pass both, taken from the tbl and pk of the last row of the previous page.');
    END IF;
    IF after_tbl IS NOT NULL AND page_size IS NULL THEN
        PERFORM tributary._raise('22023', 'a continuation needs page_size',
            'after_tbl/after_pk were given without page_size.', 'Pass the same page_size as the first page.');
    END IF;
    FOR rel IN SELECT * FROM tributary._window_tables(since, upto, tables) LOOP
        CONTINUE WHEN after_tbl IS NOT NULL AND rel < after_tbl::oid;
        IF page_size IS NULL THEN
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, false)
                USING greatest(since - off, 0), upto - off, skip_origin, NULL::jsonb, NULL::bigint;
        ELSE
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, true)
                USING greatest(since - off, 0), upto - off, skip_origin,
                      CASE WHEN rel = after_tbl::oid THEN after_pk END, left_rows;
            GET DIAGNOSTICS got = ROW_COUNT;
            left_rows := left_rows - got;
            EXIT WHEN left_rows <= 0;
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.sync_changes_since(bigint, bigint, regclass[], text, integer, regclass, jsonb) IS
  'Net changes stamped in [since, until). Protocol: v := sync_current_version(); read sync_changes_since(last, v); last := v.';

CREATE OR REPLACE FUNCTION @extschema@.sync_payload(tbl regclass, from_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v bigint := @extschema@.sync_current_version();
    t tributary.tracked := tributary._tracked(tbl);
    kind text := 'Diff';
    reason int := 0;
    since bigint := from_version;
    rows jsonb;
BEGIN
    IF from_version IS NULL THEN
        PERFORM tributary._raise('22004', 'from_version must not be NULL',
            'The version passed as from_version is NULL.', 'Pass 0 for a first sync, or the Version of your last payload.');
    END IF;
    IF from_version = 0 THEN
        kind := 'Full'; reason := 1;
    ELSIF from_version > 0 AND from_version <= v AND from_version - tributary._version_offset() < t.min_valid THEN
        kind := 'Full';
        reason := CASE t.min_valid_reason WHEN 'retention' THEN 2 WHEN 'truncate' THEN 3 WHEN 'retrack' THEN 4
                                          WHEN 'restore' THEN 5 ELSE 2 END;
        since := 0;
    END IF;
    SELECT coalesce(jsonb_agg(CASE WHEN c.op = 'D' THEN c.pk ELSE c.data::jsonb END
                              || jsonb_build_object('$operation', c.op) ORDER BY c.pk), '[]'::jsonb)
      INTO rows
      FROM @extschema@.sync_changes_since(since, v, ARRAY[tbl]) AS c;
    RETURN jsonb_build_object(
        'Metadata', jsonb_build_object('Sync', jsonb_build_object('Version', v, 'Type', kind, 'ReasonCode', reason)),
        'Data', rows);
END $$;
COMMENT ON FUNCTION @extschema@.sync_payload(regclass, bigint) IS
  'Offline-client payload. ReasonCode: 0 diff, 1 first sync, 2 older than retention, 3 truncated, 4 re-tracked, 5 restored.';

CREATE OR REPLACE FUNCTION @extschema@.sync_restored() RETURNS bigint
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
COMMENT ON FUNCTION @extschema@.sync_restored() IS
  'Adopt a restore from another cluster: restamp, raise min_valid (readers resync), offset versions. Idempotent.';
REVOKE ALL ON FUNCTION @extschema@.sync_restored() FROM PUBLIC;

-- 7. A queue row's source position is (hub, lsn, ord): rows restored from
--    another cluster's dump never collide with new ones.
--    tributary._queue_position brings each existing queue to that shape.
CREATE OR REPLACE FUNCTION tributary._queue_position(tbl text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE old_key name;
BEGIN
    -- Each step only when needed: a queue already in shape is left alone
    -- (ALTER TABLE would need its owner).
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = format('tributary.%I', tbl)::regclass
                      AND a.attname = 'hub' AND NOT a.attisdropped) THEN
        EXECUTE format('ALTER TABLE tributary.%I ADD COLUMN hub text NOT NULL DEFAULT %L', tbl, '');
    END IF;
    FOR old_key IN SELECT c.conname FROM pg_constraint c
                    WHERE c.conrelid = format('tributary.%I', tbl)::regclass
                      AND pg_get_constraintdef(c.oid) = 'UNIQUE (lsn, ord)' LOOP
        EXECUTE format('ALTER TABLE tributary.%I DROP CONSTRAINT %I', tbl, old_key);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conrelid = format('tributary.%I', tbl)::regclass
                      AND c.conname = tbl || '_pos') THEN
        EXECUTE format('ALTER TABLE tributary.%I ADD CONSTRAINT %I UNIQUE (hub, lsn, ord)', tbl, tbl || '_pos');
    END IF;
END $$;

CREATE OR REPLACE FUNCTION @extschema@.sync_queue_create(queue text, max_attempts integer DEFAULT 10) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE tbl text := 'queue_' || queue;
BEGIN
    IF queue IS NULL OR queue !~ '^[a-z0-9_]{1,48}$' THEN
        PERFORM tributary._raise('22023', 'invalid queue name',
            format('Got %s.', coalesce(quote_literal(queue), 'NULL')),
            'Use 1 to 48 characters of a-z, 0-9 and _.');
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        PERFORM tributary._raise('22023', 'max_attempts must be at least 1',
            format('max_attempts = %s.', coalesce(max_attempts::text, 'NULL')), 'Pass e.g. 10.');
    END IF;
    EXECUTE format($t$
        CREATE TABLE IF NOT EXISTS tributary.%I (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            lsn          pg_lsn NOT NULL,        -- commit LSN of the source transaction
            ord          integer NOT NULL,       -- position of the change in it
            tbl          text NOT NULL,
            op           text NOT NULL CHECK (op IN ('I', 'U', 'D', 'T')),
            pk           jsonb,
            data         jsonb,
            origin       text,
            committed_at timestamptz,
            status       text NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'acked', 'dead')),
            attempts     integer NOT NULL DEFAULT 0,
            visible_at   timestamptz NOT NULL DEFAULT now(),
            acked_at     timestamptz,
            last_error   text
        )$t$, tbl);
    PERFORM tributary._queue_position(tbl);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON tributary.%I (id) WHERE status = ''ready''', tbl || '_ready', tbl);
    INSERT INTO tributary.queues AS q (name, relid, max_attempts)
    VALUES (queue, format('tributary.%I', tbl)::regclass, max_attempts)
    ON CONFLICT (name) DO UPDATE SET max_attempts = excluded.max_attempts;
END $$;
COMMENT ON FUNCTION @extschema@.sync_queue_create(text, integer) IS 'Create (or update) an outbound queue. Idempotent.';
REVOKE ALL ON FUNCTION tributary._queue_position(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._queue_position(text) TO PUBLIC;
SELECT tributary._queue_position('queue_' || q.name) FROM tributary.queues q;

-- 8. What a trigger does inside a peer's statement (an ON DELETE CASCADE, a
--    user trigger's write) is the hub's own doing: its deletes are tagged
--    and its tombstones written without the peer's origin, so they reach
--    that peer too. (The row trigger, in the library, does the same.)
CREATE OR REPLACE FUNCTION tributary._on_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    img jsonb := to_jsonb(OLD);
    key jsonb;
BEGIN
    SELECT jsonb_object_agg(c, img -> c) INTO key FROM unnest(TG_ARGV) AS c;
    INSERT INTO tributary.tombstones AS t
           (relid, pk, xid, version, origin, deleted_at, data, colmeta, row_origin, created_xid)
    VALUES (TG_RELID, key, pg_current_xact_id()::text::bigint,
            coalesce((img ->> 'sync_version')::bigint, 0) + 1,
            -- a cascade (a statement run by a trigger) is not the origin's own
            CASE WHEN pg_trigger_depth() > 1 THEN NULL ELSE nullif(current_setting('tributary.origin', true), '') END,
            now(),
            img - '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[],
            OLD.sync_colmeta, OLD.sync_origin, OLD.sync_created_xid)
    ON CONFLICT (relid, pk) DO UPDATE
        SET xid = excluded.xid, version = excluded.version, origin = excluded.origin,
            deleted_at = excluded.deleted_at, data = excluded.data, colmeta = excluded.colmeta,
            row_origin = excluded.row_origin, created_xid = excluded.created_xid;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tributary._delete_origin() RETURNS trigger
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

CREATE OR REPLACE FUNCTION tributary._install_triggers(tbl regclass, pk text[]) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pk_cond text;
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
    -- Tables with the last_writer_wins policy stamp a clock on local writes.
    EXECUTE format('CREATE TRIGGER zzz_tributary_track BEFORE INSERT OR UPDATE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary.row_trigger(%s)', tbl,
                   CASE WHEN EXISTS (SELECT 1 FROM tributary.policies p WHERE p.relid = tbl AND p.policy = 'last_writer_wins')
                        THEN '''lww''' ELSE '' END);
    EXECUTE format('CREATE TRIGGER zzz_tributary_delete BEFORE DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary._on_delete(%s)',
                   tbl, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(pk) c));
    SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ') INTO pk_cond FROM unnest(pk) c;
    EXECUTE format('CREATE TRIGGER zzz_tributary_rekey BEFORE UPDATE ON %s
                    FOR EACH ROW WHEN (%s) EXECUTE FUNCTION tributary._on_delete(%s)',
                   tbl, pk_cond, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(pk) c));
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
END $$;
-- The tombstone triggers are BEFORE row triggers now: made again on every
-- tracked table.
SELECT tributary._install_triggers(t.relid, t.pk_columns) FROM tributary.tracked t WHERE t.active;

-- 9. The views over Tributary's state run as whoever reads them: the
--    tables' privileges and row-level security apply (before, a role with
--    no privileges read every conflict's and parked change's rows).
ALTER VIEW @extschema@.sync_policies SET (security_invoker = true);
ALTER VIEW @extschema@.sync_conflicts SET (security_invoker = true);
ALTER VIEW @extschema@.sync_pending SET (security_invoker = true);
