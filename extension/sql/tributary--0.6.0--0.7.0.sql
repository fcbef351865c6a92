-- Tributary 0.6.0 -> 0.7.0: scoped reads that indexes serve. Run by ALTER
-- EXTENSION tributary UPDATE; every step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.7.0'" to load this file. \quit

-- 1. A scoped reader's "could hold the key" looks at the images of the
--    window only (from its since on), not at every image since the filter
--    was set: what changed before its since, it has already read. Fewer
--    deletes of keys it never held, and a smaller set to search.
--    _seen_images(f, NULL) gives the images of every key.
CREATE OR REPLACE FUNCTION tributary._seen_images(f tributary.filters, key_cond text) RETURNS text
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


-- 2. The scoped read of a filtered table in branches that indexes serve:
--    the admitted rows with the filter in the WHERE clause (an index on the
--    columns it reads serves it), and the rows that left it from the keys
--    with images in the window, instead of one pass that tried every row
--    of the window against the filter and the retained images.
CREATE OR REPLACE FUNCTION tributary._changes_query(rel oid, since bigint, paged boolean, scoped boolean) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    pk text[] := (SELECT pk_columns FROM tributary.tracked WHERE relid = rel);
    meta text[] := '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}';  -- never in data
    f tributary.filters;
    attnums int2[];
    names text[];
    pk_expr text;
    pk_match text;
    op text := $e$CASE WHEN t.sync_created_xid >= $1 THEN 'I' ELSE 'U' END$e$;
    data text := 'tributary.row_json(t.*)';  -- t.*: the row even if a column is named t
    changed text := 'CASE WHEN t.sync_created_xid >= $1 THEN %1$L::text[]
                    ELSE tributary.changed_columns(t.sync_colmeta, t.sync_created_xid, $1, %2$L::int2[], %1$L::text[])
               END';
    rows_where text := '';
    deletes_where text := '';
    left_q text := '';
    -- Paged reads order by the typed key (so the primary key's index
    -- serves a page without reading the whole window) and continue after
    -- the typed value of after_pk ($4).
    key_out text := '';
    key_after text := '';
    key_order text;
    key_cols text;
    key_out_kk text;
    key_cols_kk text;
    q text;
BEGIN
    SELECT array_agg(a.attnum ORDER BY a.attnum), array_agg(a.attname::text ORDER BY a.attnum)
      INTO attnums, names
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> ALL (meta);
    SELECT 'jsonb_build_object(' || string_agg(format('%L, t.%I', c, c), ', ') || ')',
           string_agg(format('t.%1$I = k.%1$I', c), ' AND ')
      INTO pk_expr, pk_match FROM unnest(pk) c;
    changed := format(changed, names, attnums);
    IF paged THEN
        SELECT string_agg(format(', t.%I AS _k%s', c, i), '' ORDER BY i),
               string_agg(format(', kk.%I AS _k%s', c, i), '' ORDER BY i),
               string_agg(format('(SELECT a.%I FROM jsonb_populate_record(NULL::%s, $4) AS a)', c, rel::regclass), ', ' ORDER BY i),
               string_agg(format('w._k%s', i), ', ' ORDER BY i),
               string_agg(format('t.%I', c), ', ' ORDER BY i),
               string_agg(format('kk.%I', c), ', ' ORDER BY i)
          INTO key_out, key_out_kk, key_after, key_order, key_cols, key_cols_kk
          FROM unnest(pk) WITH ORDINALITY AS u(c, i);
    END IF;
    IF scoped THEN
        SELECT * INTO f FROM tributary.filters x WHERE x.relid = rel AND x.filter IS NOT NULL;
    END IF;
    IF f.filter IS NOT NULL THEN
        -- The filter as written (NULL does not admit, in a WHERE clause).
        rows_where := format(' AND ((%s)::boolean)', f.filter);
        deletes_where := ' AND ' || tributary._seen(f, 'd.pk');
        IF since > 0 THEN
            -- Live rows that left the filter: only keys with an image in
            -- the window can have been held and no longer be admitted.
            left_q := format($q$
        UNION ALL
        SELECT %1$s::oid::regclass, 'D', %2$s, NULL::json, t.sync_version, t.sync_origin, NULL::text[]%3$s
          FROM %4$s AS t
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)
           AND (%5$s) IN (SELECT %6$s FROM (SELECT DISTINCT h.pk FROM (%7$s) AS h) AS hk
                           CROSS JOIN LATERAL jsonb_populate_record(NULL::%4$s, hk.pk) AS kk)
           AND NOT %8$s AND %9$s%10$s$q$,
                rel, pk_expr, CASE WHEN paged THEN key_out ELSE '' END, rel::regclass,
                (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(pk) c),
                (SELECT string_agg(format('kk.%I', c), ', ') FROM unnest(pk) c),
                tributary._seen_images(f, NULL), tributary._admits(f, NULL), tributary._seen(f, pk_expr),
                CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols, key_after) ELSE '' END);
        END IF;
    END IF;

    q := format($q$
        SELECT %1$s::oid::regclass AS tbl,
               %2$s AS op,
               %3$s AS pk,
               %4$s AS data,
               t.sync_version AS row_version,
               t.sync_origin AS origin,
               %5$s AS changed_columns%8$s
          FROM %6$s AS t
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)%7$s%9$s$q$,
        rel, op, pk_expr, data, changed, rel::regclass, rows_where,
        CASE WHEN paged THEN key_out ELSE '' END,
        CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols, key_after) ELSE '' END)
        || left_q;
    -- Deletes: not owed to a first (full) sync, and superseded when the key
    -- is live again (the live row is delivered instead).
    IF since > 0 THEN
        q := q || format($q$
        UNION ALL
        SELECT %1$s::oid::regclass, 'D', d.pk, NULL::json, d.version, d.origin, NULL::text[]%5$s
          FROM tributary.tombstones d%6$s
         WHERE d.relid = %1$s AND d.xid >= $1 AND d.xid < $2
           AND ($3::text IS NULL OR d.origin IS DISTINCT FROM $3)
           AND NOT EXISTS (SELECT 1 FROM jsonb_populate_record(NULL::%2$s, d.pk) AS k
                           JOIN %2$s AS t ON %3$s)%4$s%7$s$q$,
            rel, rel::regclass, pk_match, deletes_where,
            CASE WHEN paged THEN key_out_kk ELSE '' END,
            CASE WHEN paged THEN format(' CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, d.pk) AS kk', rel::regclass) ELSE '' END,
            CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols_kk, key_after) ELSE '' END);
    END IF;
    IF paged THEN
        q := 'SELECT w.tbl, w.op, w.pk, w.data, w.row_version, w.origin, w.changed_columns FROM ('
             || q || ') AS w ORDER BY ' || key_order || ' LIMIT $5';
    END IF;
    RETURN q;
END $$;


-- 3. sync_schema gives each column's type OID (type_oid) beside its name,
--    so that a remote SQLite peer (the edge client) maps it to the same
--    SQLite type as a worker-attached one.
CREATE OR REPLACE FUNCTION @extschema@.sync_schema() RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object('tables', coalesce(jsonb_agg(d.description ORDER BY d.nspname, d.relname), '[]'::jsonb))
    FROM (
        SELECT n.nspname COLLATE "C" AS nspname, c.relname COLLATE "C" AS relname, jsonb_build_object(
            'table', t.relid::text,
            'schema', n.nspname,
            'name', c.relname,
            'primary_key', to_jsonb(t.pk_columns),
            'columns', coalesce((
                SELECT jsonb_agg(jsonb_build_object(
                           'name', a.attname,
                           'type', format_type(a.atttypid, a.atttypmod),
                           'type_oid', a.atttypid::bigint,
                           'nullable', NOT a.attnotnull,
                           'generated', a.attgenerated <> '',
                           'has_default', (a.atthasdef AND a.attgenerated = '') OR a.attidentity <> '')
                       ORDER BY a.attnum)
                  FROM pg_attribute a
                 WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attname <> ALL ('{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}'::text[])
                   AND has_column_privilege(t.relid, a.attnum, 'SELECT')), '[]'::jsonb),
            'privileges', jsonb_build_object(
                'insert', has_table_privilege(t.relid, 'INSERT'),
                'update', has_table_privilege(t.relid, 'UPDATE'),
                'delete', has_table_privilege(t.relid, 'DELETE'))) AS description
        FROM tributary.tracked t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.active AND has_any_column_privilege(t.relid, 'SELECT')
    ) AS d
$$;
COMMENT ON FUNCTION @extschema@.sync_schema() IS
  'The tracked tables the caller may read: key, columns it may select (without Tributary''s) and its write privileges.';
