-- Tributary 0.7.0 -> 0.8.0: a peer sees and settles its own conflicts over
-- the gateway, inside its row filter. Run by ALTER EXTENSION tributary
-- UPDATE; every step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.8.0'" to load this file. \quit

-- 1. A scoped session (tributary.claims set: the gateway acting for a peer)
--    reads the conflicts of that peer alone (tributary.peer), not every
--    conflict of the tables its role may read: another tenant's images are
--    in those.
DROP POLICY IF EXISTS conflicts_readable ON tributary.conflicts;
CREATE POLICY conflicts_readable ON tributary.conflicts
    FOR SELECT USING (has_table_privilege(relid, 'SELECT')
                      AND (coalesce(current_setting('tributary.claims', true), '') = ''
                           OR remote_origin = current_setting('tributary.peer', true)));

-- 2. sync_act_for_peer sets tributary.peer with the claims.
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
    PERFORM pg_catalog.set_config('tributary.peer', peer, true);
    PERFORM pg_catalog.set_config('role', role_name, true);
    RETURN role_name;
END $$;
COMMENT ON FUNCTION @extschema@.sync_act_for_peer(text, jsonb) IS
  'Act for a peer until the transaction ends: SET LOCAL ROLE to its role and set tributary.claims. Returns the role.';


-- 3. Whether a key's row is inside a scoped caller's row filter (or absent):
--    sync_resolve_conflict checks it before and after a peer's resolution.
CREATE OR REPLACE FUNCTION tributary._key_in_scope(tbl regclass, pk jsonb) RETURNS boolean
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

REVOKE ALL ON FUNCTION tributary._key_in_scope(regclass, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tributary._key_in_scope(regclass, jsonb) TO PUBLIC;

-- 4. sync_resolve_conflict, for a scoped session: the row must be inside
--    the peer's filter before the resolution and after it (42501 otherwise,
--    nothing changed). And a resolution naming some columns updates the
--    row it finds: as INSERT ... ON CONFLICT it failed on the NOT NULL
--    columns it did not name, before it found the row.
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
    scoped boolean;
    present boolean;
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
    scoped := tributary._scoped();
    IF scoped AND NOT tributary._key_in_scope(c.relid::regclass, c.pk) THEN
        PERFORM tributary._raise('42501', format('conflict %s is outside your row filter', id),
            format('The row %s of %s as the hub holds it now is not admitted by its row filter for this peer.',
                   c.pk, c.relid::regclass),
            'Only rows inside the peer''s filter can be resolved by it; an admin can, with sync_resolve_conflict.');
    END IF;
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
        -- The row's other columns stay as they are: an UPDATE of the
        -- columns the resolution names, or an INSERT when the row is gone
        -- (an INSERT ... ON CONFLICT would check the NOT NULL columns a
        -- partial image lacks before it found the row).
        SELECT string_agg(quote_ident(k), ', '),
               coalesce(string_agg(format('%1$I = k.%1$I', k), ', ') FILTER (WHERE k <> ALL (t.pk_columns)), '')
          INTO cols_sql, sets FROM jsonb_object_keys(merged) k;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %1$s AS r, jsonb_populate_record(NULL::%1$s, $1) AS k WHERE %2$s FOR UPDATE OF r)',
                       c.relid::regclass,
                       (SELECT string_agg(format('r.%1$I = k.%1$I', k), ' AND ') FROM unnest(t.pk_columns) k))
            INTO present USING merged;
        IF NOT present THEN
            EXECUTE format('INSERT INTO %1$s AS r (%2$s) SELECT %2$s FROM jsonb_populate_record(NULL::%1$s, $1)',
                           c.relid::regclass, cols_sql)
                USING merged;
        ELSIF sets <> '' THEN
            EXECUTE format('UPDATE %1$s AS r SET %2$s FROM jsonb_populate_record(NULL::%1$s, $1) AS k WHERE %3$s',
                           c.relid::regclass, sets,
                           (SELECT string_agg(format('r.%1$I = k.%1$I', k), ' AND ') FROM unnest(t.pk_columns) k))
                USING merged;
        END IF;
    END IF;
    IF scoped AND NOT tributary._key_in_scope(c.relid::regclass, c.pk) THEN
        PERFORM tributary._raise('42501', format('resolving conflict %s would move its row out of your row filter', id),
            format('With %s, the row %s of %s would not be admitted by its row filter for this peer.',
                   resolution, c.pk, c.relid::regclass),
            'Choose a resolution that keeps the row inside the filter; nothing was changed.');
    END IF;
    PERFORM set_config('tributary.origin', coalesce(prev_origin, ''), true);
    RETURN id;
END $$;
COMMENT ON FUNCTION @extschema@.sync_resolve_conflict(bigint, jsonb) IS
  'Close a conflict with "keep_local", "take_remote" or a merged row, applied as a new hub revision.';


-- 5. sync_schema gives each table's estimated_rows (the planner's estimate;
--    NULL before the table was analyzed), for a first download's estimate.
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
                'delete', has_table_privilege(t.relid, 'DELETE')),
            'estimated_rows', CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END) AS description
        FROM tributary.tracked t
        JOIN pg_class c ON c.oid = t.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE t.active AND has_any_column_privilege(t.relid, 'SELECT')
    ) AS d
$$;
COMMENT ON FUNCTION @extschema@.sync_schema() IS
  'The tracked tables the caller may read: key, columns it may select (without Tributary''s) and its write privileges.';

