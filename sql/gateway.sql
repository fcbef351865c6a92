-- What the HTTP gateway (worker/src/gateway/) runs. It logs in as a role of
-- its own and, for every request, in one transaction:
--
--   BEGIN;
--   SELECT sync_act_for_peer($sub, $claims);   -- SET LOCAL ROLE <peer's role>, tributary.claims
--   SELECT sync_schema() | sync_payload_window(..) | sync_payload_rows(..) | sync_row(..)
--        | sync_apply(..)                      -- all as the peer's role: its privileges and RLS
--   COMMIT;                                    -- role and claims end with the transaction
--
-- Its one shared long-poll watcher asks sync_tables_changed(since, until),
-- as the gateway's own role (sync_gateway_grant), which tables to wake
-- requests for. The pull functions it uses (sync_payload_window,
-- sync_payload_rows) are in sql/pull.sql; sync_claim is Rust
-- (extension/src/api/claims.rs).

-- Acts for a peer until the transaction ends: takes the role registered for
-- it (sync_set_peer(name, priority, role)) as SET LOCAL ROLE does, sets
-- tributary.claims to the verified token's claims, read with sync_claim(),
-- and tributary.peer to the peer (whose conflicts alone it then sees).
-- Not SECURITY DEFINER and without SET clauses: the settings it makes must
-- outlive the call. Only a session whose login role is a member of the
-- peer's role (or a superuser) may take it, exactly as SET ROLE checks.
CREATE FUNCTION sync_act_for_peer(peer text, claims jsonb DEFAULT '{}') RETURNS text
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
    PERFORM pg_catalog.set_config('tributary.peer', peer, true);
    PERFORM pg_catalog.set_config('role', role_name, true);
    RETURN role_name;
END $$;
COMMENT ON FUNCTION sync_act_for_peer(text, jsonb) IS
  'Act for a peer until the transaction ends: SET LOCAL ROLE to its role and set tributary.claims. Returns the role.';

-- One row by primary key, as the caller (privileges and row-level security
-- apply), shaped as sync_changes_since's data, with its revision (the ETag).
-- A scoped session gets no row its table's row filter does not admit.
-- VOLATILE: with lock, the row is locked FOR UPDATE (an If-Match check
-- followed by sync_apply in the same transaction).
CREATE FUNCTION sync_row(tbl regclass, pk jsonb, lock boolean DEFAULT false)
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
COMMENT ON FUNCTION sync_row(regclass, jsonb, boolean) IS
  'One row of a tracked table by primary key, as the caller: data (as sync_changes_since) and row_version (its ETag).';

-- For a scoped session (sync_resolve_conflict): whether the row of `pk` is
-- inside the caller's row filter, or absent. A table without a filter, or
-- an unscoped session, always is. As the caller: a row it may not read is
-- outside.
CREATE FUNCTION tributary._key_in_scope(tbl regclass, pk jsonb) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    t tributary.tracked := tributary._tracked(tbl);
    cond text;
    present boolean;
BEGIN
    IF NOT tributary._scoped()
       OR NOT EXISTS (SELECT 1 FROM tributary.filters x WHERE x.relid = tbl AND x.filter IS NOT NULL) THEN
        RETURN true;
    END IF;
    SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') INTO cond FROM unnest(t.pk_columns) AS c;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %1$s AS t, jsonb_populate_record(NULL::%1$s, $1) AS k WHERE %2$s)',
                   tbl, cond)
        INTO present USING pk;
    RETURN NOT present OR EXISTS (SELECT 1 FROM @extschema@.sync_row(tbl, pk));
END $$;

-- The tracked tables the caller may read, as a client needs them to build
-- its store: key, columns (those the caller may select, without Tributary's
-- own; each with its type's name and OID, which a SQLite peer maps as the
-- stream's relation messages do), what it may write, and the planner's
-- estimate of its rows (NULL before the table was analyzed), for a client's
-- progress estimate. Ordered by schema and name.
CREATE FUNCTION sync_schema() RETURNS jsonb
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
                'delete', has_table_privilege(t.relid, 'DELETE')),
            'estimated_rows', CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END) AS description
        FROM tributary.tracked t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.active AND has_any_column_privilege(t.relid, 'SELECT')
    ) AS d
$$;
COMMENT ON FUNCTION sync_schema() IS
  'The tracked tables the caller may read: key, columns it may select (without Tributary''s) and its write privileges.';

-- For the gateway's one shared long-poll watcher: which tracked tables have
-- a change in [since, until), a live row stamped in it or a tombstone, read
-- as tributary._changes_query reads them (sync_xid, with its index; versions
-- carry tributary._version_offset()). SECURITY DEFINER, so that one watcher
-- serves every peer: it reveals only which tables changed, and runs no user
-- code (EXISTS probes of the sync_xid and tombstone indexes, names quoted,
-- built-in operators only on its pinned search_path). Not granted to
-- PUBLIC: sync_gateway_grant(role).
CREATE FUNCTION sync_tables_changed(since bigint, until bigint) RETURNS SETOF regclass
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
COMMENT ON FUNCTION sync_tables_changed(bigint, bigint) IS
  'The tracked tables with a change in [since, until), for the gateway''s shared watcher. Not granted to PUBLIC.';

-- For the gateway's one shared long-poll watcher, when tables have row
-- filters: for each claims object (1-based index) and table, whether a
-- session scoped with those claims reads at least one change of that table
-- in [since, until), by the rules of sync_changes_since (and a change of the
-- table's filter since `since`, which such a reader is told to resync for).
-- As the caller: privileges and row-level security apply. The work is
-- Rust (tributary._changed_for, extension/src/watch.rs): each table's query
-- is built and prepared once, then run once per claims set with
-- tributary.claims set to it; the setting is restored at the end.
CREATE FUNCTION sync_changed_for(since bigint, until bigint, tables regclass[], claims jsonb[])
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
COMMENT ON FUNCTION sync_changed_for(bigint, bigint, regclass[], jsonb[]) IS
  'For the gateway''s shared watcher: which claims sets (1-based) would read a change of which tables in [since, until). As the caller.';

-- Grants a gateway's login role what it needs that PUBLIC lacks: the
-- shared watcher's sync_tables_changed. Everything else it does as a
-- peer's role, which is granted to it (GRANT device TO gateway; the
-- gateway's role may be NOINHERIT, holding no data privileges of its own).
CREATE FUNCTION sync_gateway_grant(gateway regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
BEGIN
    IF gateway IS NULL THEN
        PERFORM tributary._raise('22023', 'gateway role is NULL', 'Got NULL.', 'Pass the gateway''s login role name.');
    END IF;
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.sync_tables_changed(bigint, bigint) TO %s', gateway);
END $$;
COMMENT ON FUNCTION sync_gateway_grant(regrole) IS
  'Grant a (LOGIN) role what the HTTP gateway needs besides the peers'' roles granted to it.';
