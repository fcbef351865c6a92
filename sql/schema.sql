-- Tributary internal schema and tables. Users read them through the sync_*
-- functions; nothing here is meant to be written by hand.

CREATE SCHEMA IF NOT EXISTS tributary;
COMMENT ON SCHEMA tributary IS 'Tributary internal state: tracked tables, tombstones';

-- One row per table that is, or was, tracked. A row is kept (active = false)
-- after sync_untrack, so that tracking the table again knows that clients may
-- hold rows from the earlier epoch and must resync in full.
CREATE TABLE tributary.tracked (
    relid        regclass PRIMARY KEY,       -- a name in a dump: OIDs differ after a restore
    pk_columns   text[] NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    tracked_xid  bigint NOT NULL,           -- stamp given to the rows present when tracking began
    min_valid    bigint NOT NULL DEFAULT 1, -- oldest version a diff can be served from
    min_valid_reason text,                  -- why min_valid was raised: retrack | truncate | retention | restore
    tracked_at   timestamptz NOT NULL DEFAULT now(),
    shape        jsonb,                     -- what peers hold: name, columns, key (see tributary._shape)
    hub          text                       -- the cluster its stamps are of: 'system identifier/database OID'
);

-- The latest delete of each key. A re-insert of the key leaves the
-- tombstone in place; readers skip tombstones whose key is live again.
CREATE TABLE tributary.tombstones (
    relid       regclass NOT NULL,
    pk          jsonb NOT NULL,
    xid         bigint NOT NULL,   -- top-level xid stamp of the deleting transaction
    version     bigint NOT NULL,   -- the revision the delete produced (last sync_version + 1)
    origin      text,              -- tributary.origin of the deleting session, NULL = local
    deleted_at  timestamptz NOT NULL DEFAULT now(),
    -- The deleted row, for the resolver: a newer update of the key brings
    -- the row back with these values under its own (see docs/architecture.md).
    data        jsonb,             -- the row's columns, without Tributary's
    colmeta     bytea,             -- its sync_colmeta
    row_origin  text,              -- its sync_origin
    created_xid bigint,            -- its sync_created_xid
    ts          bigint,            -- the delete's hybrid-clock time (last_writer_wins tables)
    PRIMARY KEY (relid, pk)
);
CREATE INDEX tombstones_window ON tributary.tombstones (relid, xid);

-- Readers see the tombstones of the tables they may read, and no others.
ALTER TABLE tributary.tombstones ENABLE ROW LEVEL SECURITY;
CREATE POLICY tombstones_readable ON tributary.tombstones
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));

-- Peer priorities for the resolver: lower number = higher priority. The
-- hub's own writes rank 0 unless a row named '' says otherwise; unknown
-- peers rank last.
-- A peer's name is claimed (as sync_apply's origin, or tributary.origin)
-- by its role, that role's members and superusers; nobody else (see
-- extension/src/privilege.rs).
CREATE TABLE tributary.peers (
    name      text PRIMARY KEY,
    priority  integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    role      regrole                   -- who may speak for it; NULL: superusers only
);

-- Conflicts the resolver could not decide (MANUAL): both images, kept until
-- resolved. The hub holds the tie-break's value meanwhile.
CREATE TABLE tributary.conflicts (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid          regclass NOT NULL,
    pk             jsonb NOT NULL,
    columns        text[] NOT NULL,          -- the overlapping columns (empty: delete against update)
    local          jsonb,                    -- the hub's row before the change (NULL: deleted)
    remote         jsonb,                    -- the incoming change's values (NULL: a delete)
    base           jsonb,                    -- the common base, where known
    local_version  bigint,
    remote_version bigint NOT NULL,
    remote_origin  text NOT NULL,
    remote_op      text NOT NULL,
    interim        text NOT NULL,            -- 'remote' or 'local': what the hub holds meanwhile
    detail         text,
    status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    resolution     jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at    timestamptz
);
CREATE INDEX conflicts_open ON tributary.conflicts (relid, pk) WHERE status = 'open';

-- Readers of a table see its conflicts; a scoped session (the gateway's
-- request for a peer: tributary.claims set) only those of the peer it acts
-- for (tributary.peer), whose images its row filter admitted when they were
-- written. Only the owner of these tables writes tombstones, conflicts and
-- parked changes: the engine, the delete trigger and sync_resolve_conflict
-- switch to it for those statements alone, after checking the caller's
-- privileges (extension/src/privilege.rs).
ALTER TABLE tributary.conflicts ENABLE ROW LEVEL SECURITY;
CREATE POLICY conflicts_readable ON tributary.conflicts
    FOR SELECT USING (has_table_privilege(relid, 'SELECT')
                      AND (coalesce(current_setting('tributary.claims', true), '') = ''
                           OR remote_origin = current_setting('tributary.peer', true)));

-- Changes parked because a foreign-key parent was missing (DEFERRED), and,
-- after tributary.max_retries attempts, dead letters. Retried in order.
CREATE TABLE tributary.pending (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    relid         regclass NOT NULL,
    pk            jsonb NOT NULL,
    origin        text NOT NULL,
    change        jsonb NOT NULL,            -- the canonical change, as sync_apply received it
    parent_relid  regclass,                  -- the table whose row was missing
    attempts      integer NOT NULL DEFAULT 1,
    last_error    text,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_try_at   timestamptz NOT NULL DEFAULT now(),
    parked_by     regrole,                   -- the role its replay acts as (NULL: unknown, never replayed)
    claims        text                       -- the parker's tributary.claims, its replay's too ('' or NULL: none)
);
CREATE INDEX pending_by_parent ON tributary.pending (parent_relid) WHERE status = 'pending';
ALTER TABLE tributary.pending ENABLE ROW LEVEL SECURITY;
CREATE POLICY pending_readable ON tributary.pending FOR SELECT USING (has_table_privilege(relid, 'SELECT'));

-- The changes of shape of tracked tables, as the DDL guard saw them (see
-- tributary._follow_ddl). The worker reads it to tell an outbox edit made
-- before a change its peer has not followed yet (it waits) from one that
-- names what never existed (refused). Names, not regclass: the row outlives
-- a later rename or drop.
CREATE TABLE tributary.schema_changes (
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
CREATE INDEX schema_changes_from ON tributary.schema_changes (from_schema, from_table);
ALTER TABLE tributary.schema_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY schema_changes_readable ON tributary.schema_changes
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));

-- Per-table resolver policy for overlaps at the same revision.
CREATE TABLE tributary.policies (
    relid      regclass PRIMARY KEY,
    policy     text NOT NULL CHECK (policy IN ('ladder', 'last_writer_wins', 'hub_wins', 'peer_wins', 'custom')),
    resolver   regprocedure,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Row filters (partial sync): a table's filter is a boolean SQL expression
-- over its columns (bare names) that may call sync_claim(). It applies to
-- scoped sessions (tributary.claims set, as the gateway sets it). The row
-- stays when the filter is removed (filter NULL), so that since_xid records
-- every change: a scoped reader older than it resyncs the table in full.
-- Written by the extension's owner only, through sync_set_filter.
CREATE TABLE tributary.filters (
    relid      regclass PRIMARY KEY,
    filter     text,                    -- NULL once removed
    columns    text[],                  -- the columns it reads (pg_depend of a probe view)
    since_xid  bigint NOT NULL,         -- the top-level xid of the transaction that last set or removed it
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tributary.filters ENABLE ROW LEVEL SECURITY;
CREATE POLICY filters_readable ON tributary.filters
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));

-- Where rows were, so that a row leaving a peer's filter reaches it as a
-- delete, and a delete reaches only the peers that could see the row: for
-- each row of a filtered table, the values its filter columns had before
-- each transaction that changed them (the first such update in the
-- transaction: tributary._on_move), and the image of a tombstone that a
-- later delete of the key overwrote (tributary._on_delete). Purged with the
-- tombstones by sync_cleanup, which raises min_valid past them.
CREATE TABLE tributary.moves (
    relid    regclass NOT NULL,
    pk       jsonb NOT NULL,
    xid      bigint NOT NULL,           -- the transaction whose change the image precedes
    before   jsonb NOT NULL,            -- the filter columns' values before it
    moved_at timestamptz NOT NULL DEFAULT now(),  -- for tributary.retention
    PRIMARY KEY (relid, pk, xid)
);
ALTER TABLE tributary.moves ENABLE ROW LEVEL SECURITY;
CREATE POLICY moves_readable ON tributary.moves
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));

-- Restores adopted by sync_restored(): versions handed to readers are the
-- xid horizon plus the latest version_offset, chosen so that every version
-- of this cluster is above every version the cluster it was restored from
-- handed out (see docs/architecture.md).
CREATE TABLE tributary.restores (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hub            text NOT NULL,       -- the cluster that adopted the restore
    restored_xid   bigint NOT NULL,     -- its xid then: the restored rows' stamp
    version_offset bigint NOT NULL,
    adopted_at     timestamptz NOT NULL DEFAULT now()
);

-- pg_dump saves the rows of these tables (and the sequences behind their
-- ids) with the dump of the database: tracking, tombstones, peers,
-- conflicts, parked changes and policies survive a dump and restore.
-- Tables are named by regclass, so a restore finds them by name.
SELECT pg_catalog.pg_extension_config_dump('tributary.tracked', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.tombstones', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.peers', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.conflicts', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.conflicts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.pending', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.pending_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.policies', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.restores', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.restores_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.filters', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.moves', '');
