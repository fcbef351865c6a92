-- Tributary 0.3.0 -> 0.4.0. Run by ALTER EXTENSION tributary UPDATE; every
-- step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.4.0'" to load this file. \quit

-- 1. Each tracked table remembers the shape its peers hold (name, columns
--    by attribute number, key), so that a later ALTER TABLE can tell a
--    rename from a drop and an add.
ALTER TABLE tributary.tracked ADD COLUMN IF NOT EXISTS shape jsonb;
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
REVOKE ALL ON FUNCTION tributary._shape(oid) FROM PUBLIC;
UPDATE tributary.tracked SET shape = tributary._shape(relid) WHERE active AND shape IS NULL;

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

-- 4. sync_track records the shape when tracking starts.
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
    UPDATE tributary.tracked SET shape = tributary._shape(tbl) WHERE relid = tbl;
END $$;

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
