-- Tributary internal schema and tables. Users read them through the sync_*
-- functions; nothing here is meant to be written by hand.

CREATE SCHEMA IF NOT EXISTS tributary;
COMMENT ON SCHEMA tributary IS 'Tributary internal state: tracked tables, tombstones';

-- One row per table that is, or was, tracked. A row is kept (active = false)
-- after sync_untrack, so that tracking the table again knows that clients may
-- hold rows from the earlier epoch and must resync in full.
CREATE TABLE tributary.tracked (
    relid        oid PRIMARY KEY,
    pk_columns   text[] NOT NULL,
    active       boolean NOT NULL DEFAULT true,
    tracked_xid  bigint NOT NULL,           -- stamp given to the rows present when tracking began
    min_valid    bigint NOT NULL DEFAULT 1, -- oldest version a diff can be served from
    min_valid_reason text,                  -- why min_valid was raised: retrack | truncate | retention
    tracked_at   timestamptz NOT NULL DEFAULT now()
);

-- The latest delete of each key. A re-insert of the key leaves the
-- tombstone in place; readers skip tombstones whose key is live again.
CREATE TABLE tributary.tombstones (
    relid       oid NOT NULL,
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
    PRIMARY KEY (relid, pk)
);
CREATE INDEX tombstones_window ON tributary.tombstones (relid, xid);

-- Readers see the tombstones of the tables they may read, and no others.
ALTER TABLE tributary.tombstones ENABLE ROW LEVEL SECURITY;
CREATE POLICY tombstones_readable ON tributary.tombstones
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
