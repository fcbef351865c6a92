-- The in-database resolver: sync_apply, peers and conflicts.
-- The engine is Rust (tributary._apply, extension/src/api/apply.rs, running
-- extension/src/engine/): it checks and types the batch (engine/batch.rs),
-- decides (core/src/resolver.rs) and writes; this file holds the SQL API.

-- Registers a peer: its priority for the resolver and the role that may
-- speak for it (claim its name as sync_apply's origin or tributary.origin).
-- Without a role, an existing peer keeps its own; a new one can be claimed
-- by superusers only.
CREATE FUNCTION sync_set_peer(name text, priority integer, role regrole DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    IF name IS NULL OR priority IS NULL THEN
        PERFORM tributary._raise('22004', 'peer name and priority must not be NULL',
            format('name = %s, priority = %s.', coalesce(quote_literal(name), 'NULL'), coalesce(priority::text, 'NULL')),
            'Lower numbers win: SELECT sync_set_peer(''CRM'', 1, ''crm_role''). The hub itself is the peer named ''''.');
    END IF;
    IF octet_length(name) > 255 THEN
        PERFORM tributary._raise('22023', 'peer name is too long',
            format('%s bytes; at most 255.', octet_length(name)), 'Use a shorter name.');
    END IF;
    IF name = '' AND role IS NOT NULL THEN
        PERFORM tributary._raise('22023', 'the hub''s own writes (the peer named '''') take no role',
            'Every session may write as the hub.', 'Call sync_set_peer('''', priority) without a role.');
    END IF;
    INSERT INTO tributary.peers AS p (name, priority, role) VALUES (name, priority, role)
    ON CONFLICT ON CONSTRAINT peers_pkey DO UPDATE
       SET priority = excluded.priority, role = coalesce(excluded.role, p.role), updated_at = now();
END $$;
COMMENT ON FUNCTION sync_set_peer(text, integer, regrole) IS
  'Register a peer: its priority for the resolver (lower wins) and the role that may speak for it.';

CREATE FUNCTION sync_set_policy(tbl regclass, policy text, resolver regprocedure DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE
    t tributary.tracked := tributary._tracked(tbl);
BEGIN
    IF policy IS NULL OR policy NOT IN ('ladder', 'last_writer_wins', 'hub_wins', 'peer_wins', 'custom') THEN
        PERFORM tributary._raise('22023', format('unknown policy %s', coalesce(quote_literal(policy), 'NULL')),
            'A policy decides overlapping changes at the same revision.',
            'Use ladder (the default), last_writer_wins, hub_wins, peer_wins or custom.');
    END IF;
    IF policy = 'custom' THEN
        IF resolver IS NULL THEN
            PERFORM tributary._raise('22023', 'the custom policy needs a resolver function',
                format('sync_set_policy(%L, ''custom'') was given no function.', tbl::text),
                'Pass a function (local jsonb, remote jsonb, base jsonb) RETURNS jsonb, e.g. ''my_merge(jsonb,jsonb,jsonb)''::regprocedure.');
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = resolver AND p.prorettype = 'jsonb'::regtype
                         AND p.pronargs = 3 AND p.proargtypes[0] = 'jsonb'::regtype AND p.proargtypes[1] = 'jsonb'::regtype AND p.proargtypes[2] = 'jsonb'::regtype
                         AND p.prokind = 'f' AND NOT p.proretset) THEN
            PERFORM tributary._raise('42883', format('%s is not a resolver function', resolver),
                'A resolver takes (local jsonb, remote jsonb, base jsonb) and returns one jsonb row object.',
                'CREATE FUNCTION my_merge(local jsonb, remote jsonb, base jsonb) RETURNS jsonb ... and pass ''my_merge(jsonb,jsonb,jsonb)''.');
        END IF;
        -- It runs as the table's owner, who must own it: a resolver cannot
        -- borrow the privileges of the role calling sync_apply.
        IF (SELECT p.proowner FROM pg_proc p WHERE p.oid = resolver)
           IS DISTINCT FROM (SELECT c.relowner FROM pg_class c WHERE c.oid = tbl) THEN
            PERFORM tributary._raise('42501', format('%s is not owned by the owner of %s', resolver, tbl),
                format('%s is owned by %s; %s by %s. A custom resolver runs as the table''s owner.', resolver,
                       (SELECT p.proowner::regrole FROM pg_proc p WHERE p.oid = resolver), tbl,
                       (SELECT c.relowner::regrole FROM pg_class c WHERE c.oid = tbl)),
                'Use a function the table''s owner owns (ALTER FUNCTION ... OWNER TO).');
        END IF;
    ELSIF resolver IS NOT NULL THEN
        PERFORM tributary._raise('22023', format('policy %s takes no resolver function', policy),
            format('resolver = %s.', resolver), 'Pass a resolver only with the custom policy.');
    END IF;
    INSERT INTO tributary.policies AS p (relid, policy, resolver) VALUES (tbl, policy, resolver)
    ON CONFLICT (relid) DO UPDATE SET policy = excluded.policy, resolver = excluded.resolver, updated_at = now();
    -- The row trigger stamps a clock on local writes only under last_writer_wins.
    EXECUTE format('DROP TRIGGER IF EXISTS zzz_tributary_track ON %s', tbl);
    EXECUTE format('CREATE TRIGGER zzz_tributary_track BEFORE INSERT OR UPDATE ON %s
                    FOR EACH ROW EXECUTE FUNCTION tributary.row_trigger(%s)', tbl,
                   CASE WHEN policy = 'last_writer_wins' THEN '''lww''' ELSE '' END);
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zzz_tributary_track', tbl);
END $$;
COMMENT ON FUNCTION sync_set_policy(regclass, text, regprocedure) IS
  'Set how sync_apply decides overlapping changes at the same revision for a table.';

-- The views run as whoever reads them (security_invoker): the tables' own
-- privileges and row-level security apply, so a role sees the conflicts and
-- parked changes of the tables it may read, and no others.
CREATE VIEW sync_policies WITH (security_invoker = true) AS
    SELECT t.relid::regclass AS tbl, coalesce(p.policy, 'ladder') AS policy, p.resolver, p.updated_at
    FROM tributary.tracked t LEFT JOIN tributary.policies p ON p.relid = t.relid
    WHERE t.active;

CREATE VIEW sync_conflicts WITH (security_invoker = true) AS
    SELECT c.id, c.relid::regclass AS tbl, c.pk, c.columns, c.local, c.remote, c.base,
           c.local_version, c.remote_version, c.remote_origin, c.remote_op, c.interim, c.detail,
           c.status, c.resolution, c.created_at, c.resolved_at
    FROM tributary.conflicts c;
COMMENT ON VIEW sync_conflicts IS 'Open and resolved conflicts of the tables you may read.';


-- The table must be tracked: checked here, in SQL, so that the error keeps
-- its own SQLSTATE (TB003). The outcomes come in the batch's order.
-- work_mem for the call only: the engine's hash joins and the outcome rows
-- of a large batch stay in memory instead of spilling to temporary files
-- (ALTER FUNCTION sync_apply(regclass, jsonb, text) SET work_mem = ... to change it).
CREATE FUNCTION sync_apply(tbl regclass, changes jsonb, origin text)
RETURNS TABLE (pk jsonb, outcome text, row_version bigint, conflict_id bigint, detail text)
LANGUAGE sql VOLATILE
SET work_mem = '64MB'
AS $$
    SELECT a.pk, a.outcome, a.row_version, a.conflict_id, a.detail
      FROM tributary._apply((tributary._tracked(tbl)).relid::regclass, changes, origin) AS a
$$;
COMMENT ON FUNCTION sync_apply(regclass, jsonb, text) IS
  'Apply a batch of a peer''s changes through the resolver; one outcome per change, in order. All or nothing on bad input.';

CREATE FUNCTION sync_resolve_conflict(id bigint, resolution jsonb) RETURNS bigint
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
COMMENT ON FUNCTION sync_resolve_conflict(bigint, jsonb) IS
  'Close a conflict with "keep_local", "take_remote" or a merged row, applied as a new hub revision.';

CREATE VIEW sync_pending WITH (security_invoker = true) AS
    SELECT p.id, p.relid::regclass AS tbl, p.pk, p.origin, p.change, p.parent_relid::regclass AS waiting_for,
           p.attempts, p.last_error, p.status, p.created_at, p.last_try_at
    FROM tributary.pending p;
COMMENT ON VIEW sync_pending IS
  'Changes parked for a missing foreign-key parent (status pending) and dead letters (status dead).';

-- Retries parked changes, oldest first, one at a time so that their order
-- holds, each as the role that parked it (tributary._replay_parked, in
-- Rust: extension/src/engine/replay.rs). A change that is still missing its
-- parent, or whose replay fails (the error in detail), stays parked with one
-- more attempt; after tributary.max_retries attempts it
-- becomes a dead letter. Returns what happened to each change of a table
-- the caller may read.
CREATE FUNCTION sync_retry_pending(tbl regclass DEFAULT NULL)
RETURNS TABLE (id bigint, tbl_name regclass, pk jsonb, outcome text, attempts integer, detail text)
LANGUAGE sql VOLATILE
AS $$ SELECT * FROM tributary._replay_parked(tbl) $$;
COMMENT ON FUNCTION sync_retry_pending(regclass) IS
  'Retry parked changes (all, or those of / waiting for one table). sync_apply also calls it for the changes waiting for the table it wrote.';
