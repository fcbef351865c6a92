-- Outbound queues: the worker's embedded default destination, consumed
-- with SQL. One durable table per queue in schema tributary (never
-- published, never tracked).
--
--   worker:   INSERT ... ON CONFLICT (hub, lsn, ord) DO NOTHING -- idempotent by source position
--   consumer: sync_queue_read(queue, n)  -> leased rows (SKIP LOCKED), in order
--             sync_queue_ack(queue, ids) -> done;  sync_queue_nack(queue, ids, error) -> again now
--   a row read tributary.queue_max_attempts times without an ack becomes a dead letter

CREATE TABLE tributary.queues (
    name         text PRIMARY KEY,
    relid        regclass NOT NULL,
    max_attempts integer NOT NULL DEFAULT 10,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Dumped with the database (the queue tables themselves are ordinary
-- tables, dumped with their rows). Positions (worker_progress) are not:
-- they belong to one cluster's WAL.
SELECT pg_catalog.pg_extension_config_dump('tributary.queues', '');

CREATE FUNCTION tributary._queue(queue text) RETURNS tributary.queues
LANGUAGE plpgsql STABLE
AS $$
DECLARE q tributary.queues;
BEGIN
    SELECT * INTO q FROM tributary.queues WHERE name = queue;
    IF NOT FOUND THEN
        PERFORM tributary._raise('TB006', format('no queue %s', coalesce(quote_literal(queue), 'NULL')),
            format('Queue %s does not exist.', coalesce(quote_literal(queue), 'NULL')),
            'Create it with SELECT sync_queue_create(''name''), or list them in tributary.queues.');
    END IF;
    RETURN q;
END $$;

-- A change's source position in queue table tributary.<tbl> is (hub, lsn,
-- ord): the cluster whose WAL the LSN is in, as the worker names it. After
-- a restore into another cluster, new LSNs may repeat those of restored
-- rows; the hub keeps them apart. Brings a queue made before to this shape;
-- run again, it changes nothing.
CREATE FUNCTION tributary._queue_position(tbl text) RETURNS void
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

CREATE FUNCTION sync_queue_create(queue text, max_attempts integer DEFAULT 10) RETURNS void
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
COMMENT ON FUNCTION sync_queue_create(text, integer) IS 'Create (or update) an outbound queue. Idempotent.';

-- Leases up to max_rows ready rows, oldest first, skipping rows another
-- consumer holds. A leased row comes back after `lease` unless acked; a row
-- leased max_attempts times without an ack becomes a dead letter instead.
CREATE FUNCTION sync_queue_read(queue text, max_rows integer, lease interval DEFAULT '30 seconds')
RETURNS TABLE (id bigint, lsn pg_lsn, tbl text, op text, pk jsonb, data jsonb, origin text, committed_at timestamptz)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE q tributary.queues := tributary._queue(queue);
BEGIN
    IF max_rows IS NULL OR max_rows < 1 THEN
        PERFORM tributary._raise('22023', 'max_rows must be at least 1',
            format('max_rows = %s.', coalesce(max_rows::text, 'NULL')), 'Pass the batch size you can process, e.g. 100.');
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        PERFORM tributary._raise('22023', 'lease must be a positive interval',
            format('lease = %s.', coalesce(lease::text, 'NULL')), 'Pass how long you need to process a batch, e.g. ''30 seconds''.');
    END IF;
    -- Rows read too often without an ack: dead letters.
    EXECUTE format($q$
        UPDATE tributary.%I AS r SET status = 'dead',
               last_error = coalesce(r.last_error, 'not acknowledged after ' || r.attempts || ' reads')
         WHERE r.status = 'ready' AND r.visible_at <= now() AND r.attempts >= $1$q$, 'queue_' || queue)
        USING q.max_attempts;
    RETURN QUERY EXECUTE format($q$
        WITH picked AS (
            SELECT r.id FROM tributary.%1$I AS r
             WHERE r.status = 'ready' AND r.visible_at <= now()
             ORDER BY r.id
             LIMIT $1
               FOR UPDATE SKIP LOCKED)
        UPDATE tributary.%1$I AS r
           SET attempts = r.attempts + 1, visible_at = now() + $2
          FROM picked WHERE r.id = picked.id
        RETURNING r.id, r.lsn, r.tbl, r.op, r.pk, r.data, r.origin, r.committed_at$q$, 'queue_' || queue)
        USING max_rows, lease;
END $$;

CREATE FUNCTION sync_queue_ack(queue text, ids bigint[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    q tributary.queues := tributary._queue(queue);
    n bigint;
BEGIN
    EXECUTE format('UPDATE tributary.%I SET status = ''acked'', acked_at = now()
                     WHERE id = ANY ($1) AND status = ''ready''', 'queue_' || queue) USING ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE FUNCTION sync_queue_nack(queue text, ids bigint[], error text DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    q tributary.queues := tributary._queue(queue);
    n bigint;
BEGIN
    EXECUTE format('UPDATE tributary.%I SET visible_at = now(), last_error = coalesce($2, last_error)
                     WHERE id = ANY ($1) AND status = ''ready''', 'queue_' || queue) USING ids, error;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Acked rows older than tributary.retention are removed; returns how many.
CREATE FUNCTION sync_queue_cleanup(queue text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    q tributary.queues := tributary._queue(queue);
    n bigint;
BEGIN
    EXECUTE format('DELETE FROM tributary.%I WHERE status = ''acked'' AND acked_at < now() - $1',
                   'queue_' || queue) USING current_setting('tributary.retention')::interval;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE FUNCTION sync_queue_stats(queue text)
RETURNS TABLE (ready bigint, leased bigint, acked bigint, dead bigint, oldest_ready timestamptz)
LANGUAGE plpgsql STABLE
AS $$
DECLARE q tributary.queues := tributary._queue(queue);
BEGIN
    RETURN QUERY EXECUTE format($q$
        SELECT count(*) FILTER (WHERE status = 'ready' AND visible_at <= now()),
               count(*) FILTER (WHERE status = 'ready' AND visible_at > now()),
               count(*) FILTER (WHERE status = 'acked'),
               count(*) FILTER (WHERE status = 'dead'),
               min(committed_at) FILTER (WHERE status = 'ready')
          FROM tributary.%I$q$, 'queue_' || queue);
END $$;

-- What each worker destination has durably applied. For a queue, written
-- by the worker in the same transaction as the rows it covers: after a
-- crash the worker skips what is at or below it. For a SQLite peer (which
-- keeps its own position in the file), the file's committed position,
-- recorded before the slot is confirmed past it: a file found below it was
-- restored from an older backup and is copied anew. `lsn` is the end of
-- the last source transaction applied.
CREATE TABLE tributary.worker_progress (
    slot        text NOT NULL,
    destination text NOT NULL,
    lsn         pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, destination)
);

-- Hub changes a peer refused again and again (a poison change: a UNIQUE
-- index or CHECK the app added to its file, a value it cannot hold). After
-- the destination's max_attempts the worker applies that transaction change
-- by change, records each refused one here (and in the peer's
-- _tributary_errors) and goes on. One row per change: (destination, lsn,
-- ord) is the change's place in the stream, so a retry after a crash
-- records it once. Readers of a table see its rows (sync_dead_letters).
CREATE TABLE tributary.dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination text NOT NULL,
    lsn         pg_lsn NOT NULL,          -- the commit of the source transaction
    ord         integer NOT NULL,         -- the change's place in it
    tbl         text NOT NULL,            -- "schema"."table" at the time
    op          text NOT NULL,
    pk          jsonb,
    data        jsonb,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (destination, lsn, ord)
);
ALTER TABLE tributary.dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_readable ON tributary.dead_letters
    FOR SELECT USING (to_regclass(tbl) IS NOT NULL AND has_table_privilege(to_regclass(tbl), 'SELECT'));
CREATE POLICY dead_letters_writable ON tributary.dead_letters
    FOR INSERT WITH CHECK (true);
SELECT pg_catalog.pg_extension_config_dump('tributary.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.dead_letters_id_seq', '');

CREATE VIEW sync_dead_letters WITH (security_invoker = true) AS
    SELECT d.id, d.destination, d.lsn, d.ord, d.tbl, d.op, d.pk, d.data, d.error, d.attempts, d.at
    FROM tributary.dead_letters d;
COMMENT ON VIEW sync_dead_letters IS
  'Hub changes a peer refused max_attempts times, set aside so that its stream goes on.';

-- Hands a peer the hub's resolved rows after its changes were applied, in
-- commit order with everything else: a transactional logical message the
-- worker turns into writes for that peer only (see docs/architecture.md,
-- "Pull"). SECURITY DEFINER: pg_logical_emit_message is not granted to
-- PUBLIC; this one emits only this prefix, and only the worker's role may
-- call it (sync_worker_grant).
CREATE FUNCTION tributary._emit_writeback(content text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ BEGIN PERFORM pg_logical_emit_message(true, 'tributary.writeback', content); END $$;

-- Grants a worker role what `tributary-worker run` needs on this database,
-- and nothing more: its progress rows, writing the existing queues, reading
-- the tracked tables (a new peer's initial copy) and applying peers'
-- changes. The role itself needs LOGIN and REPLICATION (CREATE ROLE w LOGIN
-- REPLICATION). Run it again after creating a queue or tracking a table.
CREATE FUNCTION sync_worker_grant(worker regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET client_min_messages = warning
AS $$
DECLARE q record;
BEGIN
    IF worker IS NULL THEN
        PERFORM tributary._raise('22023', 'worker role is NULL', 'Got NULL.', 'Pass the worker''s role name.');
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA tributary TO %s', worker);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON tributary.worker_progress TO %s', worker);
    EXECUTE format('GRANT SELECT ON tributary.queues TO %s', worker);
    EXECUTE format('GRANT SELECT, INSERT ON tributary.dead_letters TO %s', worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION @extschema@.sync_apply(regclass, jsonb, text) TO %s', worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION tributary._emit_writeback(text) TO %s', worker);
    FOR q IN SELECT relid FROM tributary.queues LOOP
        EXECUTE format('GRANT SELECT, INSERT ON %s TO %s', q.relid::regclass, worker);
    END LOOP;
    -- The initial copy of a new peer reads the tracked tables.
    FOR q IN SELECT t.relid, n.nspname FROM tributary.tracked t
               JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE t.active LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %s', q.nspname, worker);
        -- SELECT for the initial copy; writing for sync_apply of the
        -- peers' own changes.
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s', q.relid::regclass, worker);
    END LOOP;
END $$;
COMMENT ON FUNCTION sync_worker_grant(regrole) IS
    'Grant a (LOGIN REPLICATION) role what the tributary worker needs. Re-run after sync_queue_create.';
