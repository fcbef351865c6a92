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
  'Offline-client payload. ReasonCode: 0 diff, 1 first sync, 2 older than retention, 3 truncated, 4 re-tracked, 5 restored.';

-- 3. A tracked table with a column named t is read whole again by
--    sync_changes_since (the row is t.*, not the column t).
CREATE OR REPLACE FUNCTION tributary._changes_query(rel oid, since bigint, paged boolean) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    pk text[] := (SELECT pk_columns FROM tributary.tracked WHERE relid = rel);
    meta text[] := '{sync_version,sync_xid,sync_created_xid,sync_origin,sync_colmeta}';  -- never in data
    attnums int2[];
    names text[];
    pk_expr text;
    pk_match text;
    q text;
BEGIN
    SELECT array_agg(a.attnum ORDER BY a.attnum), array_agg(a.attname::text ORDER BY a.attnum)
      INTO attnums, names
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> ALL (meta);
    SELECT 'jsonb_build_object(' || string_agg(format('%L, t.%I', c, c), ', ') || ')',
           string_agg(format('t.%1$I = k.%1$I', c), ' AND ')
      INTO pk_expr, pk_match FROM unnest(pk) c;

    q := format($q$
        SELECT %1$s::oid::regclass AS tbl,
               CASE WHEN t.sync_created_xid >= $1 THEN 'I' ELSE 'U' END AS op,
               %2$s AS pk,
               tributary.row_json(t.*) AS data,  -- t.*: the row even if a column is named t
               t.sync_version AS row_version,
               t.sync_origin AS origin,
               CASE WHEN t.sync_created_xid >= $1 THEN %4$L::text[]
                    ELSE tributary.changed_columns(t.sync_colmeta, t.sync_created_xid, $1, %5$L::int2[], %4$L::text[])
               END AS changed_columns
          FROM %6$s AS t
         WHERE t.sync_xid >= $1 AND t.sync_xid < $2
           AND ($3::text IS NULL OR t.sync_origin IS DISTINCT FROM $3)$q$,
        rel, pk_expr, NULL, names, attnums, rel::regclass);
    -- Deletes: not owed to a first (full) sync, and superseded when the key
    -- is live again (the live row is delivered instead).
    IF since > 0 THEN
        q := q || format($q$
        UNION ALL
        SELECT %1$s::oid::regclass, 'D', d.pk, NULL::json, d.version, d.origin, NULL::text[]
          FROM tributary.tombstones d
         WHERE d.relid = %1$s AND d.xid >= $1 AND d.xid < $2
           AND ($3::text IS NULL OR d.origin IS DISTINCT FROM $3)
           AND NOT EXISTS (SELECT 1 FROM jsonb_populate_record(NULL::%2$s, d.pk) AS k
                           JOIN %2$s AS t ON %3$s)$q$,
            rel, rel::regclass, pk_match);
    END IF;
    IF paged THEN
        q := 'SELECT * FROM (' || q || ') AS w WHERE $4::jsonb IS NULL OR w.pk > $4 ORDER BY w.pk LIMIT $5';
    END IF;
    RETURN q;
END $$;

-- 4. The gateway: sync_act_for_peer (the peer's role and claims for the
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
    -- t.*: a whole-row reference even when the table has a column named t.
    RETURN QUERY EXECUTE format(
        'SELECT tributary.row_json(t.*), t.sync_version
           FROM %1$s AS t, jsonb_populate_record(NULL::%1$s, $1) AS k
          WHERE %2$s%3$s',
        tbl, cond, CASE WHEN lock THEN ' FOR UPDATE OF t' ELSE '' END)
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

-- 5. Grants of the new functions (as sql/grants.sql has them).
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
