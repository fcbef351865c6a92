-- Tributary 0.5.0 -> 0.6.0: the SQL the HTTP gateway needs. Run by ALTER
-- EXTENSION tributary UPDATE; every step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.6.0'" to load this file. \quit

-- 1. The verified token's claims: the setting tributary.claims (the
--    library's) and sync_claim(name), for row filters and RLS policies.
CREATE OR REPLACE FUNCTION @extschema@.sync_claim(name text) RETURNS text
STRICT STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'sync_claim_wrapper';
COMMENT ON FUNCTION @extschema@.sync_claim(text) IS
  'A claim of the request''s verified token (tributary.claims, set by sync_act_for_peer), for row filters and RLS policies. NULL if absent.';

-- 2. Payloads defined once: sync_payload_window (Version, Type,
--    ReasonCode, and where the rows are read from) and sync_payload_rows
--    (the Data items, pageable, spliced by tributary.payload_item without a
--    jsonb round trip); sync_payload is made of the two. The functions, byte
--    for byte as in sql/ (see scripts/sql_blocks.py).
CREATE OR REPLACE FUNCTION tributary.payload_item(op text, body json) RETURNS json
STRICT IMMUTABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'payload_item_wrapper';
CREATE OR REPLACE FUNCTION @extschema@.sync_payload_window(tbl regclass, from_version bigint)
RETURNS TABLE (version bigint, type text, reason_code integer, since bigint)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v bigint := @extschema@.sync_current_version();
    t tributary.tracked := tributary._tracked(tbl);
BEGIN
    IF from_version IS NULL THEN
        PERFORM tributary._raise('22004', 'from_version must not be NULL',
            'The version passed as from_version is NULL.', 'Pass 0 for a first sync, or the Version of your last payload.');
    END IF;
    version := v;
    type := 'Diff';
    reason_code := 0;
    since := from_version;
    IF from_version = 0 THEN
        type := 'Full'; reason_code := 1;
    ELSIF from_version > 0 AND from_version <= v AND from_version - tributary._version_offset() < t.min_valid THEN
        type := 'Full';
        reason_code := CASE t.min_valid_reason WHEN 'retention' THEN 2 WHEN 'truncate' THEN 3 WHEN 'retrack' THEN 4
                                               WHEN 'restore' THEN 5 ELSE 2 END;
        since := 0;
    ELSIF from_version > 0 AND from_version <= v AND tributary._scoped()
          AND EXISTS (SELECT 1 FROM tributary.filters f
                       WHERE f.relid = tbl AND from_version - tributary._version_offset() <= f.since_xid) THEN
        type := 'Full';
        reason_code := 6;
        since := 0;
    END IF;
    -- The errors reading the window gives (a negative version, one from the
    -- future, a table restored from another cluster), before any row is read.
    PERFORM tributary._window_tables(since, v, ARRAY[tbl]);
    RETURN NEXT;
END $$;
COMMENT ON FUNCTION @extschema@.sync_payload_window(regclass, bigint) IS
  'What sync_payload(tbl, from_version) answers: Version to store next, Type, ReasonCode, and the version its rows are read from.';

CREATE OR REPLACE FUNCTION @extschema@.sync_payload_rows(tbl regclass, since bigint, until bigint, after_pk jsonb DEFAULT NULL,
                                  page_size integer DEFAULT NULL)
RETURNS TABLE (pk jsonb, item json)
LANGUAGE sql STABLE
AS $$
    SELECT c.pk, tributary.payload_item(c.op,
               CASE WHEN NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl
                                        AND a.attname = '$operation' AND NOT a.attisdropped)
                    THEN CASE WHEN c.op = 'D' THEN c.pk::json ELSE c.data END
                    ELSE (CASE WHEN c.op = 'D' THEN c.pk ELSE c.data::jsonb END - '$operation')::json END)
      FROM @extschema@.sync_changes_since(since, until, ARRAY[tbl], NULL, page_size,
                                          CASE WHEN after_pk IS NOT NULL THEN tbl END, after_pk) AS c
     ORDER BY c.pk
$$;
COMMENT ON FUNCTION @extschema@.sync_payload_rows(regclass, bigint, bigint, jsonb, integer) IS
  'The Data items of a payload of one table for [since, until), in pk order; page with page_size and after_pk.';

CREATE OR REPLACE FUNCTION @extschema@.sync_payload(tbl regclass, from_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    w record;
    rows jsonb;
BEGIN
    SELECT * INTO w FROM @extschema@.sync_payload_window(tbl, from_version);
    SELECT coalesce(jsonb_agg(r.item::jsonb ORDER BY r.pk), '[]'::jsonb)
      INTO rows
      FROM @extschema@.sync_payload_rows(tbl, w.since, w.version) AS r;
    RETURN jsonb_build_object(
        'Metadata', jsonb_build_object('Sync', jsonb_build_object('Version', w.version, 'Type', w.type,
                                                                  'ReasonCode', w.reason_code)),
        'Data', rows);
END $$;
COMMENT ON FUNCTION @extschema@.sync_payload(regclass, bigint) IS
  'Offline-client payload. ReasonCode: 0 diff, 1 first sync, 2 older than retention, 3 truncated, 4 re-tracked, 5 restored, 6 row filter changed.';

-- 3. Row filters' state: tributary.filters (one row per table that has or
--    had a filter; since_xid records each change), tributary.moves (where
--    rows were), both readable by the tables' readers and saved by
--    pg_dump; parked changes keep the parker's claims and replay under
--    them (tributary.pending.claims).
CREATE TABLE IF NOT EXISTS tributary.filters (
    relid      regclass PRIMARY KEY,
    filter     text,                    -- NULL once removed
    columns    text[],                  -- the columns it reads (pg_depend of a probe view)
    since_xid  bigint NOT NULL,         -- the top-level xid of the transaction that last set or removed it
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tributary.filters ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS filters_readable ON tributary.filters;
CREATE POLICY filters_readable ON tributary.filters
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
CREATE TABLE IF NOT EXISTS tributary.moves (
    relid    regclass NOT NULL,
    pk       jsonb NOT NULL,
    xid      bigint NOT NULL,           -- the transaction whose change the image precedes
    before   jsonb NOT NULL,            -- the filter columns' values before it
    moved_at timestamptz NOT NULL DEFAULT now(),  -- for tributary.retention
    PRIMARY KEY (relid, pk, xid)
);
ALTER TABLE tributary.moves ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS moves_readable ON tributary.moves;
CREATE POLICY moves_readable ON tributary.moves
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
SELECT pg_catalog.pg_extension_config_dump('tributary.filters', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.moves', '');
ALTER TABLE tributary.pending ADD COLUMN IF NOT EXISTS claims text;

-- 4. sync_changes_since reads through row filters for scoped sessions
--    (section 7): tributary._changes_query takes whether to build the
--    scoped form, and a tracked table with a column named t is read whole
--    again (the row is t.*, not the column t).
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
    rows_from text := '';
    rows_where text := '';
    deletes_where text := '';
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
        op := 'CASE WHEN NOT w.adm THEN ''D'' ELSE ' || op || ' END';
        data := 'CASE WHEN w.adm THEN ' || data || ' END';
        changed := 'CASE WHEN w.adm THEN ' || changed || ' END';
        rows_from := format(' CROSS JOIN LATERAL (SELECT %s AS adm) AS w', tributary._admits(f, NULL));
        rows_where := CASE WHEN since > 0 THEN format(' AND (w.adm OR %s)', tributary._seen(f, pk_expr))
                           ELSE ' AND w.adm' END;
        deletes_where := ' AND ' || tributary._seen(f, 'd.pk');
    END IF;

    q := format($q$
        SELECT %1$s::oid::regclass AS tbl,
               %2$s AS op,
               %3$s AS pk,
               %4$s AS data,
               t.sync_version AS row_version,
               t.sync_origin AS origin,
               %5$s AS changed_columns%9$s
          FROM %6$s AS t%7$s
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)%8$s%10$s$q$,
        rel, op, pk_expr, data, changed, rel::regclass, rows_from, rows_where,
        CASE WHEN paged THEN key_out ELSE '' END,
        CASE WHEN paged THEN format(' AND ($4::jsonb IS NULL OR (%s) > (%s))', key_cols, key_after) ELSE '' END);
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
    scoped boolean := tributary._scoped();
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
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, false, scoped)
                USING greatest(since - off, 0), upto - off, skip_origin, NULL::jsonb, NULL::bigint;
        ELSE
            RETURN QUERY EXECUTE tributary._changes_query(rel, since, true, scoped)
                USING greatest(since - off, 0), upto - off, skip_origin,
                      CASE WHEN rel = after_tbl::oid THEN after_pk END, left_rows;
            GET DIAGNOSTICS got = ROW_COUNT;
            left_rows := left_rows - got;
            EXIT WHEN left_rows <= 0;
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.sync_changes_since(bigint, bigint, regclass[], text, integer, regclass, jsonb) IS
  'Net changes stamped in [since, until). Protocol: v := sync_current_version(); read sync_changes_since(last, v); last := v. Scoped sessions read through row filters.';
DROP FUNCTION IF EXISTS tributary._changes_query(oid, bigint, boolean);

-- 5. The gateway: sync_act_for_peer (the peer's role and claims for the
--    request's transaction), sync_row, sync_schema, and for its shared
--    watcher sync_tables_changed, granted by sync_gateway_grant.
CREATE OR REPLACE FUNCTION @extschema@.sync_act_for_peer(peer text, claims jsonb DEFAULT '{}') RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    p tributary.peers;
    role_name text;
BEGIN
    IF peer IS NULL THEN
        PERFORM tributary._raise('22004', 'peer must not be NULL', 'The peer name passed is NULL.',
            'Pass the name of the peer the token was issued for (its sub claim).');
    END IF;
    IF peer = '' THEN
        PERFORM tributary._raise('28000', 'the hub''s own name is not a peer',
            'The peer named '''' stands for the hub''s own writes; no role speaks for it.',
            'Name the peer the token was issued for, registered with sync_set_peer(name, priority, role).');
    END IF;
    IF claims IS NULL OR jsonb_typeof(claims) <> 'object' THEN
        PERFORM tributary._raise('22023', 'claims must be a JSON object',
            format('claims = %s.', coalesce(left(claims::text, 200), 'NULL')),
            'Pass the token''s claims as a jsonb object, e.g. ''{"tenant": "t1"}'', or ''{}'' for none.');
    END IF;
    SELECT * INTO p FROM tributary.peers AS x WHERE x.name = peer;
    IF NOT FOUND THEN
        PERFORM tributary._raise('28000', format('unknown peer %L', peer),
            format('No peer named %L is registered in tributary.peers.', peer),
            format('Register it with the role that speaks for it: SELECT sync_set_peer(%L, <priority>, <role>).', peer));
    END IF;
    IF p.role IS NULL THEN
        PERFORM tributary._raise('28000', format('peer %L has no role', peer),
            format('Peer %L was registered without a role: only superusers may speak for it.', peer),
            format('Name the role that speaks for it: SELECT sync_set_peer(%L, %s, <role>).', peer, p.priority));
    END IF;
    SELECT r.rolname INTO role_name FROM pg_catalog.pg_roles AS r WHERE r.oid = p.role;
    IF role_name IS NULL THEN
        PERFORM tributary._raise('28000', format('the role of peer %L no longer exists', peer),
            format('Peer %L names role OID %s, which was dropped.', peer, p.role::oid),
            format('Name its role again: SELECT sync_set_peer(%L, %s, <role>).', peer, p.priority));
    END IF;
    -- SET ROLE checks the session's login role, not the current one.
    IF NOT pg_catalog.pg_has_role(session_user, p.role::oid, 'MEMBER') THEN
        PERFORM tributary._raise('42501', format('role %I may not act for peer %L', session_user, peer),
            format('Acting for peer %L takes its role %I; the session''s role %I is not a member of it.',
                   peer, role_name, session_user),
            format('GRANT %I TO %I;  (the gateway''s role may be NOINHERIT, so that it holds no data privileges of its own)',
                   role_name, session_user));
    END IF;
    PERFORM pg_catalog.set_config('tributary.claims', claims::text, true);
    PERFORM pg_catalog.set_config('role', role_name, true);
    RETURN role_name;
END $$;
COMMENT ON FUNCTION @extschema@.sync_act_for_peer(text, jsonb) IS
  'Act for a peer until the transaction ends: SET LOCAL ROLE to its role and set tributary.claims. Returns the role.';

CREATE OR REPLACE FUNCTION @extschema@.sync_row(tbl regclass, pk jsonb, lock boolean DEFAULT false)
RETURNS TABLE (data json, row_version bigint)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    t tributary.tracked := tributary._tracked(tbl);
    key_list text := array_to_string(t.pk_columns, ', ');
    bad text;
    cond text;
    f tributary.filters;
BEGIN
    IF pk IS NULL OR jsonb_typeof(pk) <> 'object' THEN
        PERFORM tributary._raise('22023', 'pk must be a JSON object of the primary key columns',
            format('pk = %s.', coalesce(left(pk::text, 200), 'NULL')),
            format('Pass the primary key columns of %s (%s), e.g. %s.', tbl, key_list,
                   (SELECT jsonb_object_agg(c, 1) FROM unnest(t.pk_columns) AS c)));
    END IF;
    SELECT k INTO bad FROM jsonb_object_keys(pk) AS k WHERE k <> ALL (t.pk_columns) ORDER BY k LIMIT 1;
    IF bad IS NOT NULL THEN
        PERFORM tributary._raise('42703',
            CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a
                               WHERE a.attrelid = tbl AND a.attname = bad AND a.attnum > 0 AND NOT a.attisdropped)
                 THEN format('column %I of %s is not part of its primary key', bad, tbl)
                 ELSE format('column %I of %s does not exist', bad, tbl) END,
            format('pk = %s.', left(pk::text, 200)),
            format('Pass exactly the primary key columns of %s: %s.', tbl, key_list));
    END IF;
    SELECT c INTO bad FROM unnest(t.pk_columns) AS c WHERE NOT pk ? c LIMIT 1;
    IF bad IS NOT NULL THEN
        PERFORM tributary._raise('22023', format('pk lacks primary key column %I of %s', bad, tbl),
            format('pk = %s.', left(pk::text, 200)),
            format('Pass every primary key column of %s: %s.', tbl, key_list));
    END IF;
    SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') INTO cond FROM unnest(t.pk_columns) AS c;
    IF tributary._scoped() THEN
        SELECT * INTO f FROM tributary.filters x WHERE x.relid = tbl AND x.filter IS NOT NULL;
    END IF;
    -- t.*: a whole-row reference even when the table has a column named t.
    RETURN QUERY EXECUTE format(
        'SELECT tributary.row_json(t.*), t.sync_version
           FROM %1$s AS t, jsonb_populate_record(NULL::%1$s, $1) AS k
          WHERE %2$s%3$s%4$s',
        tbl, cond, CASE WHEN f.filter IS NOT NULL THEN ' AND ' || tributary._admits(f, '(SELECT t.*)') ELSE '' END,
        CASE WHEN lock THEN ' FOR UPDATE OF t' ELSE '' END)
        USING pk;
END $$;
COMMENT ON FUNCTION @extschema@.sync_row(regclass, jsonb, boolean) IS
  'One row of a tracked table by primary key, as the caller: data (as sync_changes_since) and row_version (its ETag).';

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

CREATE OR REPLACE FUNCTION @extschema@.sync_tables_changed(since bigint, until bigint) RETURNS SETOF regclass
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cur bigint := @extschema@.sync_current_version();
    off bigint := tributary._version_offset();
    lo bigint;
    hi bigint;
    rel regclass;
    hit boolean;
BEGIN
    IF since IS NULL OR until IS NULL THEN
        PERFORM tributary._raise('22004', 'since and until must not be NULL',
            format('since = %s, until = %s.', coalesce(since::text, 'NULL'), coalesce(until::text, 'NULL')),
            'Pass the version the watcher has seen up to, and sync_current_version().');
    END IF;
    IF since < 0 OR until < since THEN
        PERFORM tributary._raise('22023', 'not a window of versions',
            format('since = %s, until = %s.', since, until), 'Pass 0 <= since <= until.');
    END IF;
    IF until > cur THEN
        PERFORM tributary._raise('TB001', 'version is from the future',
            format('Asked for [%s, %s) but the current version is %s.', since, until, cur),
            'Pass until = sync_current_version() taken in this transaction or before.');
    END IF;
    lo := greatest(since - off, 0);
    hi := until - off;
    FOR rel IN SELECT t.relid FROM tributary.tracked t JOIN pg_class c ON c.oid = t.relid
                WHERE t.active ORDER BY t.relid LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE sync_xid >= $1 AND sync_xid < $2)', rel)
           INTO hit USING lo, hi;
        IF hit OR EXISTS (SELECT 1 FROM tributary.tombstones d WHERE d.relid = rel AND d.xid >= lo AND d.xid < hi) THEN
            RETURN NEXT rel;
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION @extschema@.sync_tables_changed(bigint, bigint) IS
  'The tracked tables with a change in [since, until), for the gateway''s shared watcher. Not granted to PUBLIC.';

CREATE OR REPLACE FUNCTION @extschema@.sync_gateway_grant(gateway regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
BEGIN
    IF gateway IS NULL THEN
        PERFORM tributary._raise('22023', 'gateway role is NULL', 'Got NULL.', 'Pass the gateway''s login role name.');
    END IF;
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.sync_tables_changed(bigint, bigint) TO %s', gateway);
END $$;
COMMENT ON FUNCTION @extschema@.sync_gateway_grant(regrole) IS
  'Grant a (LOGIN) role what the HTTP gateway needs besides the peers'' roles granted to it.';

-- 6. sync_changed_for, for the gateway's shared watcher when tables have
--    row filters: which claims sets would read a change of which tables.
CREATE OR REPLACE FUNCTION @extschema@.sync_changed_for(since bigint, until bigint, tables regclass[], claims jsonb[])
RETURNS TABLE (claims_index integer, tbl regclass)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    cur bigint := @extschema@.sync_current_version();
    off bigint := tributary._version_offset();
    t regclass;
    bad integer;
BEGIN
    IF since IS NULL OR until IS NULL OR tables IS NULL OR claims IS NULL THEN
        PERFORM tributary._raise('22004', 'since, until, tables and claims must not be NULL',
            format('since = %s, until = %s, tables = %s, claims = %s.', coalesce(since::text, 'NULL'),
                   coalesce(until::text, 'NULL'), coalesce(tables::text, 'NULL'),
                   coalesce(left(claims::text, 200), 'NULL')),
            'Pass the window the watcher looks at, the tables polled, and one claims object per waiting request.');
    END IF;
    IF since < 0 OR until < since THEN
        PERFORM tributary._raise('22023', 'not a window of versions',
            format('since = %s, until = %s.', since, until), 'Pass 0 <= since <= until.');
    END IF;
    IF until > cur THEN
        PERFORM tributary._raise('TB001', 'version is from the future',
            format('Asked for [%s, %s) but the current version is %s.', since, until, cur),
            'Pass until = sync_current_version() taken in this transaction or before.');
    END IF;
    FOREACH t IN ARRAY tables LOOP
        PERFORM tributary._tracked(t);
    END LOOP;
    SELECT c.n::integer INTO bad FROM unnest(claims) WITH ORDINALITY AS c(v, n)
     WHERE c.v IS NULL OR jsonb_typeof(c.v) <> 'object' LIMIT 1;
    IF bad IS NOT NULL THEN
        PERFORM tributary._raise('22023', format('claims[%s] is not a JSON object', bad),
            format('claims[%s] = %s.', bad, coalesce(left(claims[bad]::text, 200), 'NULL')),
            'Pass each request''s verified claims as a jsonb object, ''{}'' for none.');
    END IF;
    RETURN QUERY
        SELECT r.claims_index, r.tbl::regclass
          FROM tributary._changed_for(greatest(since - off, 0), until - off, since > 0,
                                      tables::oid[], claims::text[]) AS r
         ORDER BY 1, 2;
END $$;
COMMENT ON FUNCTION @extschema@.sync_changed_for(bigint, bigint, regclass[], jsonb[]) IS
  'For the gateway''s shared watcher: which claims sets (1-based) would read a change of which tables in [since, until). As the caller.';
CREATE OR REPLACE FUNCTION tributary._changed_for(lo bigint, hi bigint, diff boolean, tables oid[], claims text[])
RETURNS TABLE (claims_index integer, tbl oid)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_changed_for_wrapper';

-- 7. Row filters (partial sync): the move trigger, the filter's SQL
--    (built once, in tributary._admits and its neighbours), sync_set_filter
--    and sync_filters; sync_row, sync_payload_window, _window_tables read
--    through filters; the triggers, untrack, drop, the DDL guard, cleanup
--    and sync_restored know tributary.filters and tributary.moves.
CREATE OR REPLACE FUNCTION tributary._on_move() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_on_move_wrapper';
CREATE OR REPLACE FUNCTION tributary._check_filter_text(filter text) RETURNS void
IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', '_check_filter_text_wrapper';
CREATE OR REPLACE FUNCTION tributary._store_filter(tbl regclass, filter text, columns text[]) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', '_store_filter_wrapper';
CREATE OR REPLACE FUNCTION tributary._scoped() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(current_setting('tributary.claims', true), '') <> '' $$;

CREATE OR REPLACE FUNCTION tributary._admits(f tributary.filters, source text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN source IS NULL THEN format('coalesce((%s)::boolean, false)', f.filter)
                ELSE format('(SELECT coalesce((%s)::boolean, false) FROM %s AS t)', f.filter, source) END
$$;

CREATE OR REPLACE FUNCTION tributary._admits_image(f tributary.filters, img text) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT tributary._admits(f, format('jsonb_populate_record(NULL::%s, %s)', f.relid, img)) $$;

CREATE OR REPLACE FUNCTION tributary._seen_images(f tributary.filters, key_cond text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format($q$SELECT m.pk, m.before AS img FROM tributary.moves m
                      WHERE m.relid = %1$s AND m.pk %2$s AND m.xid >= %3$s
                     UNION ALL
                     SELECT s.pk, coalesce(s.data, '{}') || s.pk FROM tributary.tombstones s
                      WHERE s.relid = %1$s AND s.pk %2$s AND s.xid >= %3$s
                        AND s.created_xid IS DISTINCT FROM s.xid$q$,
                  f.relid::oid, key_cond, f.since_xid)
$$;

CREATE OR REPLACE FUNCTION tributary._seen(f tributary.filters, pk text) RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT format('EXISTS (SELECT 1 FROM (%s) AS h WHERE %s)',
                  tributary._seen_images(f, '= ' || pk), tributary._admits_image(f, 'h.img'))
$$;

CREATE OR REPLACE FUNCTION tributary._keep_tombstones(rel oid, keys jsonb[]) RETURNS void
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

CREATE OR REPLACE FUNCTION tributary._changed_images(rel oid, since bigint) RETURNS text
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

CREATE OR REPLACE FUNCTION @extschema@.sync_set_filter(tbl regclass, filter text) RETURNS void
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
COMMENT ON FUNCTION @extschema@.sync_set_filter(regclass, text) IS
  'Set (or with NULL remove) the row filter of a tracked table: a boolean expression over its columns that may call sync_claim(). Table owner only.';

CREATE OR REPLACE FUNCTION tributary._window_tables(since bigint, until bigint, tables regclass[])
RETURNS SETOF oid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    cur bigint := @extschema@.sync_current_version();
    off bigint := tributary._version_offset();
    live text := tributary._hub_identity();
    scoped boolean := tributary._scoped();
    t regclass;
    tr tributary.tracked;
    f tributary.filters;
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
        IF scoped AND since > 0 THEN
            SELECT * INTO f FROM tributary.filters x WHERE x.relid = tr.relid AND since - off <= x.since_xid;
            IF FOUND THEN
                PERFORM tributary._raise('TB002',
                    format('version %s is too old for table %s under its row filter', since, tr.relid::regclass),
                    format('The row filter of %s was %s at version %s; what a scoped reader older than that holds was chosen by the filter before.',
                           tr.relid::regclass,
                           CASE WHEN f.filter IS NULL THEN 'removed' ELSE format('set to %L', f.filter) END,
                           f.since_xid + off),
                    format('Resync the table in full: sync_changes_since(0, tables => ARRAY[%L::regclass]) or sync_payload(%L, 0).',
                           tr.relid::regclass::text, tr.relid::regclass::text));
            END IF;
        END IF;
        RETURN NEXT tr.relid;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION tributary._install_triggers(tbl regclass, pk text[]) RETURNS void
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
COMMENT ON FUNCTION @extschema@.sync_untrack(regclass, boolean) IS
  'Stop change tracking. Readers of the table must resync in full if it is tracked again.';

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
        DELETE FROM tributary.filters WHERE relid = o.objid;
        DELETE FROM tributary.moves WHERE relid = o.objid;
    END LOOP;
END $$;

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

CREATE OR REPLACE FUNCTION @extschema@.sync_cleanup() RETURNS bigint
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
COMMENT ON FUNCTION @extschema@.sync_cleanup() IS
  'Purge tombstones and moves older than tributary.retention; returns rows purged and raises min valid versions.';
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
COMMENT ON FUNCTION @extschema@.sync_restored() IS
  'Adopt a restore from another cluster: restamp, raise min_valid (readers resync), offset versions. Idempotent.';

CREATE OR REPLACE VIEW @extschema@.sync_filters WITH (security_invoker = true) AS
    SELECT f.relid::regclass AS tbl, f.filter, f.columns, f.since_xid + tributary._version_offset() AS since_version,
           f.updated_at
    FROM tributary.filters f;
COMMENT ON VIEW @extschema@.sync_filters IS
  'Row filters of the tables you may read (filter NULL: removed), and the version since which each holds.';

-- 8. Grants of the new functions and tables (as sql/grants.sql has them).
REVOKE ALL ON FUNCTION tributary.payload_item(text, json) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary.payload_item(text, json) TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.sync_act_for_peer(text, jsonb),
    @extschema@.sync_claim(text),
    @extschema@.sync_payload_window(regclass, bigint),
    @extschema@.sync_payload_rows(regclass, bigint, bigint, jsonb, integer),
    @extschema@.sync_row(regclass, jsonb, boolean),
    @extschema@.sync_schema()
  TO PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_tables_changed(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.sync_gateway_grant(regrole) FROM PUBLIC;
REVOKE ALL ON FUNCTION
    @extschema@.sync_set_filter(regclass, text),
    tributary._changes_query(oid, bigint, boolean, boolean),
    tributary._scoped(), tributary._admits(tributary.filters, text), tributary._admits_image(tributary.filters, text),
    tributary._seen_images(tributary.filters, text), tributary._seen(tributary.filters, text),
    tributary._keep_tombstones(oid, jsonb[]), tributary._changed_images(oid, bigint),
    tributary._changed_for(bigint, bigint, boolean, oid[], text[]), tributary._check_filter_text(text),
    tributary._store_filter(regclass, text, text[]), tributary._on_move()
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.sync_changed_for(bigint, bigint, regclass[], jsonb[]),
    tributary._changes_query(oid, bigint, boolean, boolean),
    tributary._scoped(), tributary._admits(tributary.filters, text), tributary._admits_image(tributary.filters, text),
    tributary._seen_images(tributary.filters, text), tributary._seen(tributary.filters, text),
    tributary._changed_images(oid, bigint),
    tributary._changed_for(bigint, bigint, boolean, oid[], text[]), tributary._check_filter_text(text),
    tributary._store_filter(regclass, text, text[])
  TO PUBLIC;
GRANT SELECT ON tributary.filters, tributary.moves, @extschema@.sync_filters TO PUBLIC;
