-- Row filters (partial sync), enforced in the hub.
--
--   sync_set_filter('orders', $$tenant_id::text = sync_claim('tenant')$$)
--     checks the expression (a probe view, as the caller), finds the columns
--     it reads (pg_depend), and stores it (tributary._store_filter, Rust: as
--     the state's owner, with the triggers):
--       tributary.filters (relid, filter, columns, since_xid, updated_at)
--       zzz_tributary_moves AFTER UPDATE OF <columns> ─> tributary.moves:
--         the values the filter read before each transaction that changed them
--       zzz_tributary_delete keeps the image of a tombstone it overwrites
--
--   A scoped session (tributary.claims set: the gateway always sets it)
--   reads a filtered table through it (tributary._changes_query, sync_row,
--   sync_changed_for) and writes only inside it (extension/src/engine/scope.rs).
--   What a reader "could have seen" of a row is the union of its retained
--   states: the current row, the images in tributary.moves, its tombstone.
--
-- Every piece of filter SQL is built here, once: an expression admitting
-- a row (tributary._admits), the images a key had (tributary._seen_images),
-- whether a reader could have seen a key (tributary._seen).

-- Whether this session reads and writes through row filters: its
-- tributary.claims is set (to a JSON object; '{}' too).
CREATE FUNCTION tributary._scoped() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(current_setting('tributary.claims', true), '') <> '' $$;

-- The SQL of "the filter `f` admits the row": `source` is a FROM item
-- giving the row as `t` (a row image: jsonb_populate_record(NULL::tbl, img);
-- or (SELECT r.*) for a row r of the table); NULL when the row is already
-- the only one in scope as t. The filter's bare names resolve to t's
-- columns, as in the probe view sync_set_filter checked it with. NULL
-- (unknown) does not admit.
CREATE FUNCTION tributary._admits(f tributary.filters, source text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN source IS NULL THEN format('coalesce((%s)::boolean, false)', f.filter)
                ELSE format('(SELECT coalesce((%s)::boolean, false) FROM %s AS t)', f.filter, source) END
$$;

-- "The filter admits the image `img`" (a jsonb expression of the row's
-- columns, those the filter reads at least).
CREATE FUNCTION tributary._admits_image(f tributary.filters, img text) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT tributary._admits(f, format('jsonb_populate_record(NULL::%s, %s)', f.relid, img)) $$;

-- The SQL of the images a key had in the window from $1 (an xid: the
-- query's first parameter) on, other than its current row: (pk, img) rows,
-- for the keys matching `key_cond` (e.g. '= d.pk'; NULL: every key). The
-- values its filter columns had before each transaction that changed them
-- (tributary.moves), and its tombstone's image, unless the deleted row was
-- created in the deleting transaction (nobody saw it). A reader at $1 holds
-- a key exactly when the key's state at $1 was admitted: the first of these
-- images, or the current row when there is none (nothing changed what the
-- filter reads). Images from before $1 are older than what it holds.
CREATE FUNCTION tributary._seen_images(f tributary.filters, key_cond text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format($q$SELECT m.pk, m.before AS img FROM tributary.moves m
                      WHERE m.relid = %1$s%2$s AND m.xid >= %3$s AND m.xid >= $1
                     UNION ALL
                     SELECT s.pk, coalesce(s.data, '{}') || s.pk FROM tributary.tombstones s
                      WHERE s.relid = %1$s%4$s AND s.xid >= %3$s AND s.xid >= $1
                        AND s.created_xid IS DISTINCT FROM s.xid$q$,
                  f.relid::oid, coalesce(' AND m.pk ' || key_cond, ''), f.since_xid,
                  coalesce(' AND s.pk ' || key_cond, ''))
$$;

-- The SQL of "a reader could have seen the key `pk`" (a jsonb expression):
-- one of its retained images is admitted. It then gets the key's delete
-- (a tombstone, or a row that left its filter); nobody else does.
CREATE FUNCTION tributary._seen(f tributary.filters, pk text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('EXISTS (SELECT 1 FROM (%s) AS h WHERE %s)',
                  tributary._seen_images(f, '= ' || pk), tributary._admits_image(f, 'h.img'))
$$;

-- Before the tombstones of `keys` of a filtered table are overwritten (a
-- key deleted again), their images go to tributary.moves, keyed by the
-- transaction that deleted that incarnation: where each key's earlier
-- incarnation was, which the new tombstone would hide. Run as the state's owner by the delete
-- trigger (on filtered tables) and by sync_apply's engine; a table without
-- a filter keeps nothing.
CREATE FUNCTION tributary._keep_tombstones(rel oid, keys jsonb[]) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tributary.moves (relid, pk, xid, before)
    SELECT d.relid, d.pk, d.xid,
           coalesce((SELECT jsonb_object_agg(c, d.data -> c) FROM unnest(f.columns) AS c WHERE d.data ? c), '{}')
      FROM tributary.tombstones d
      JOIN tributary.filters f ON f.relid = d.relid AND f.filter IS NOT NULL
     WHERE d.relid = rel AND d.pk = ANY (keys) AND d.xid >= f.since_xid
       AND d.created_xid IS DISTINCT FROM d.xid
    ON CONFLICT DO NOTHING
$$;

-- For sync_changed_for: the SQL of the distinct images that decide whether
-- a scoped reader of the filtered table `rel` reads a change in [$1, $2)
-- (xids): the rows stamped in it and, in a diff, every retained image of
-- their keys and of the keys deleted in it. A reader reads a change exactly
-- when its filter admits one of them (the rules of _changes_query). One
-- row: the images as an array of the table's rows (typed once, for every
-- claims set to read), NULL when there is none.
CREATE FUNCTION tributary._changed_images(rel oid, since bigint) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    f tributary.filters;
    pk text[] := (SELECT pk_columns FROM tributary.tracked WHERE relid = rel);
    pk_expr text;
    pk_match text;
    img text;
BEGIN
    SELECT * INTO f FROM tributary.filters x WHERE x.relid = rel AND x.filter IS NOT NULL;
    SELECT 'jsonb_build_object(' || string_agg(format('%L, t.%I', c, c), ', ') || ')',
           string_agg(format('t.%1$I = k.%1$I', c), ' AND ')
      INTO pk_expr, pk_match FROM unnest(pk) c;
    SELECT 'jsonb_build_object(' || coalesce(string_agg(format('%L, t.%I', c, c), ', '), '') || ')'
      INTO img FROM unnest(f.columns) c;
    IF since = 0 THEN
        RETURN format('SELECT array_agg(jsonb_populate_record(NULL::%2$s, x.img))
                         FROM (SELECT DISTINCT %1$s AS img FROM %2$s AS t WHERE t.sync_xid >= $1 AND t.sync_xid < $2) AS x',
                      img, rel::regclass);
    END IF;
    RETURN format($q$
        WITH live AS (SELECT %1$s AS pk, %2$s AS img FROM %3$s AS t WHERE t.sync_xid >= $1 AND t.sync_xid < $2),
             keys AS (SELECT live.pk FROM live
                      UNION
                      SELECT d.pk FROM tributary.tombstones d
                       WHERE d.relid = %4$s AND d.xid >= $1 AND d.xid < $2
                         AND NOT EXISTS (SELECT 1 FROM jsonb_populate_record(NULL::%3$s, d.pk) AS k
                                         JOIN %3$s AS t ON %5$s))
        SELECT array_agg(jsonb_populate_record(NULL::%3$s, x.img))
          FROM (SELECT live.img FROM live UNION SELECT h.img FROM (%6$s) AS h) AS x$q$,
        pk_expr, img, rel::regclass, rel, pk_match,
        tributary._seen_images(f, 'IN (SELECT keys.pk FROM keys)'));
END $$;

-- Sets, changes or (NULL) removes the row filter of a tracked table: a
-- boolean expression over its columns (bare names) that may call
-- sync_claim(). Only the table's owner (or a superuser) may. The
-- expression is checked as the caller by a temporary probe view (its
-- errors keep their SQLSTATE), which also tells the columns it reads. A
-- change makes scoped readers older than it resync the table in full
-- (TB002, ReasonCode 6). The state is written by tributary._store_filter.
CREATE FUNCTION sync_set_filter(tbl regclass, filter text) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE
    t tributary.tracked := tributary._tracked(tbl);
    owner oid := (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl);
    probe text := 'tributary_filter_probe_' || pg_catalog.pg_backend_pid();
    cols text[];
    bad text;
    code text;
    msg text;
BEGIN
    IF NOT pg_catalog.pg_has_role(owner, 'USAGE') THEN
        PERFORM tributary._raise('42501', format('only the owner of %s may set its row filter', tbl),
            format('Role %I does not own %s; %s does.', current_user, tbl, owner::regrole),
            'Run sync_set_filter as the table''s owner (or a superuser).');
    END IF;
    -- No write of the table runs while its filter and triggers change.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
    IF filter IS NOT NULL THEN
        PERFORM tributary._check_filter_text(filter);
        BEGIN
            EXECUTE format('CREATE TEMPORARY VIEW %I AS SELECT 1 AS probe FROM %s AS t WHERE (%s)::boolean',
                           probe, tbl, filter);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            PERFORM tributary._raise(code, format('the row filter of %s is not a valid expression: %s', tbl, msg),
                format('filter = %L, checked as SELECT 1 FROM %s AS t WHERE (filter)::boolean.', filter, tbl),
                'Write one boolean expression over the table''s columns, by their bare names, e.g. tenant_id::text = sync_claim(''tenant'').');
        END;
        -- The columns it reads, as the view's rule depends on them.
        SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO cols
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = tbl
           AND a.attnum IN (SELECT d.refobjsubid FROM pg_catalog.pg_depend d
                              JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid
                             WHERE d.classid = 'pg_rewrite'::regclass
                               AND r.ev_class = format('pg_temp.%I', probe)::regclass
                               AND d.refclassid = 'pg_class'::regclass AND d.refobjid = tbl AND d.refobjsubid > 0);
        -- A whole-row reference (t, t.*) reads every column, Tributary's too.
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r
                    WHERE r.ev_class = format('pg_temp.%I', probe)::regclass
                      AND r.ev_action::text LIKE '%:varattno 0 %') THEN
            bad := 'the whole row';
        END IF;
        EXECUTE format('DROP VIEW pg_temp.%I', probe);
        IF bad IS NULL THEN
            SELECT format('column %I', c) INTO bad FROM unnest(cols) AS c
             WHERE c = ANY ('{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[]) LIMIT 1;
        END IF;
        IF bad IS NOT NULL THEN
            PERFORM tributary._raise('22023', format('a row filter may not read %s', bad),
                format('filter = %L reads %s of %s; Tributary''s tracking columns change with every write.', filter, bad, tbl),
                'Write the filter over the table''s own columns, each by name.');
        END IF;
    END IF;
    PERFORM tributary._store_filter(tbl, filter, coalesce(cols, '{}'));
END $$;
COMMENT ON FUNCTION sync_set_filter(regclass, text) IS
  'Set (or with NULL remove) the row filter of a tracked table: a boolean expression over its columns that may call sync_claim(). Table owner only.';

-- The row filters of the tables the caller may read, with the version
-- from which they hold: a scoped reader whose version is not above it
-- resyncs the table in full. A removed filter stays listed (filter NULL).
CREATE VIEW sync_filters WITH (security_invoker = true) AS
    SELECT f.relid::regclass AS tbl, f.filter, f.columns, f.since_xid + tributary._version_offset() AS since_version,
           f.updated_at
    FROM tributary.filters f;
COMMENT ON VIEW sync_filters IS
  'Row filters of the tables you may read (filter NULL: removed), and the version since which each holds.';
