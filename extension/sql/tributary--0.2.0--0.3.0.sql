-- Tributary 0.2.0 -> 0.3.0. Run by ALTER EXTENSION tributary UPDATE; every
-- step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.3.0'" to load this file. \quit

-- 1. The tracking triggers of a table are made by one function, run by
--    sync_track and again after an ALTER TABLE that changed the key.
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
    EXECUTE format('CREATE TRIGGER zzz_tributary_delete AFTER DELETE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary._on_delete(%s)',
                   tbl, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(pk) c));
    SELECT string_agg(format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', c), ' OR ') INTO pk_cond FROM unnest(pk) c;
    EXECUTE format('CREATE TRIGGER zzz_tributary_rekey AFTER UPDATE ON %s
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
REVOKE ALL ON FUNCTION tributary._install_triggers(regclass, text[]) FROM PUBLIC;

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
END $$;

-- 2. sync_untrack marks the table inactive before it drops the tracking
--    columns (the DDL guard below protects those of active tables).
CREATE OR REPLACE FUNCTION @extschema@.sync_untrack(tbl regclass, drop_columns boolean DEFAULT true) RETURNS void
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
END $$;

-- 3. The DDL guard: after an ALTER TABLE of a tracked table, the key is
--    found again by what it is (its primary key), and a change tracking
--    cannot follow is refused (TB007).
CREATE OR REPLACE FUNCTION tributary._on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cmd record;
    t tributary.tracked;
    pk text[];
    missing text;
BEGIN
    FOR cmd IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
                WHERE c.classid = 'pg_class'::regclass LOOP
        SELECT * INTO t FROM tributary.tracked WHERE relid = cmd.objid AND active;
        CONTINUE WHEN NOT FOUND;
        SELECT w.name INTO missing
          FROM unnest(ARRAY['sync_version', 'sync_xid', 'sync_created_xid', 'sync_origin', 'sync_colmeta'],
                      ARRAY['bigint', 'bigint', 'bigint', 'text', 'bytea']) AS w(name, want)
         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                            WHERE a.attrelid = cmd.objid AND a.attname = w.name AND NOT a.attisdropped
                              AND format_type(a.atttypid, a.atttypmod) = w.want)
         LIMIT 1;
        IF missing IS NOT NULL THEN
            PERFORM tributary._raise('TB007',
                format('column %I of tracked table %s is Tributary''s', missing, cmd.objid::regclass),
                format('Tracking needs column %I (as it was) to follow %s; the change was refused.', missing, cmd.objid::regclass),
                format('To change it, stop tracking first: SELECT sync_untrack(%L).', cmd.objid::regclass::text));
        END IF;
        pk := tributary._pk_columns(cmd.objid);
        IF pk IS NULL THEN
            PERFORM tributary._raise('TB007',
                format('tracked table %s would have no primary key', cmd.objid::regclass),
                format('Changes of %s are identified by its primary key (%s); the change was refused.',
                       cmd.objid::regclass, array_to_string(t.pk_columns, ', ')),
                'Change the key in one statement, e.g. ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (other); or stop tracking first with sync_untrack.');
        END IF;
        IF pk IS DISTINCT FROM t.pk_columns THEN
            UPDATE tributary.tracked SET pk_columns = pk WHERE relid = cmd.objid;
            PERFORM tributary._install_triggers(cmd.objid::regclass, pk);
        END IF;
    END LOOP;
END $$;
REVOKE ALL ON FUNCTION tributary._on_ddl_end() FROM PUBLIC;
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'tributary_ddl_end') THEN
        CREATE EVENT TRIGGER tributary_ddl_end ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
            EXECUTE FUNCTION tributary._on_ddl_end();
    END IF;
END $do$;
