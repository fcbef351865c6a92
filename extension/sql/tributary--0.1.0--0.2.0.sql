-- Tributary 0.1.0 -> 0.2.0. Run by ALTER EXTENSION tributary UPDATE; every
-- step can run again over what it already did.
\echo Use "ALTER EXTENSION tributary UPDATE TO '0.2.0'" to load this file. \quit

-- 1. Tables are named by regclass instead of oid, so that pg_dump saves
--    them by name and a restore (where OIDs differ) finds them again. The
--    row-level security policies and the views that read these columns
--    are dropped and made again as a fresh install makes them.
DROP VIEW IF EXISTS @extschema@.sync_policies, @extschema@.sync_conflicts, @extschema@.sync_pending;
DROP POLICY IF EXISTS tombstones_readable ON tributary.tombstones;
DROP POLICY IF EXISTS tombstones_writable ON tributary.tombstones;
DROP POLICY IF EXISTS tombstones_rewritable ON tributary.tombstones;
DROP POLICY IF EXISTS conflicts_readable ON tributary.conflicts;
DROP POLICY IF EXISTS conflicts_writable ON tributary.conflicts;
DROP POLICY IF EXISTS conflicts_resolvable ON tributary.conflicts;
DROP POLICY IF EXISTS pending_readable ON tributary.pending;
DROP POLICY IF EXISTS pending_writable ON tributary.pending;

ALTER TABLE tributary.tracked ALTER COLUMN relid TYPE regclass;
ALTER TABLE tributary.tombstones ALTER COLUMN relid TYPE regclass;
ALTER TABLE tributary.conflicts ALTER COLUMN relid TYPE regclass;
ALTER TABLE tributary.pending ALTER COLUMN relid TYPE regclass, ALTER COLUMN parent_relid TYPE regclass;
ALTER TABLE tributary.policies ALTER COLUMN relid TYPE regclass;
ALTER TABLE tributary.queues ALTER COLUMN relid TYPE regclass;

CREATE POLICY tombstones_readable ON tributary.tombstones
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
CREATE POLICY conflicts_readable ON tributary.conflicts
    FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
CREATE POLICY conflicts_writable ON tributary.conflicts
    FOR INSERT WITH CHECK (has_table_privilege(relid, 'INSERT, UPDATE'));
CREATE POLICY conflicts_resolvable ON tributary.conflicts
    FOR UPDATE USING (has_table_privilege(relid, 'UPDATE'));
CREATE POLICY tombstones_writable ON tributary.tombstones
    FOR INSERT WITH CHECK (has_table_privilege(relid, 'DELETE'));
CREATE POLICY tombstones_rewritable ON tributary.tombstones
    FOR UPDATE USING (has_table_privilege(relid, 'DELETE'));
CREATE POLICY pending_readable ON tributary.pending FOR SELECT USING (has_table_privilege(relid, 'SELECT'));
CREATE POLICY pending_writable ON tributary.pending FOR ALL USING (has_table_privilege(relid, 'INSERT, UPDATE'))
    WITH CHECK (has_table_privilege(relid, 'INSERT, UPDATE'));

CREATE VIEW @extschema@.sync_policies AS
    SELECT t.relid::regclass AS tbl, coalesce(p.policy, 'ladder') AS policy, p.resolver, p.updated_at
    FROM tributary.tracked t LEFT JOIN tributary.policies p ON p.relid = t.relid
    WHERE t.active;

CREATE VIEW @extschema@.sync_conflicts AS
    SELECT c.id, c.relid::regclass AS tbl, c.pk, c.columns, c.local, c.remote, c.base,
           c.local_version, c.remote_version, c.remote_origin, c.remote_op, c.interim, c.detail,
           c.status, c.resolution, c.created_at, c.resolved_at
    FROM tributary.conflicts c;
COMMENT ON VIEW @extschema@.sync_conflicts IS 'Open and resolved conflicts of the tables you may read.';

CREATE VIEW @extschema@.sync_pending AS
    SELECT p.id, p.relid::regclass AS tbl, p.pk, p.origin, p.change, p.parent_relid::regclass AS waiting_for,
           p.attempts, p.last_error, p.status, p.created_at, p.last_try_at
    FROM tributary.pending p;
COMMENT ON VIEW @extschema@.sync_pending IS
  'Changes parked for a missing foreign-key parent (status pending) and dead letters (status dead).';

GRANT SELECT ON @extschema@.sync_policies TO PUBLIC;
GRANT SELECT ON @extschema@.sync_conflicts, @extschema@.sync_pending TO PUBLIC;

-- 2. pg_dump saves Tributary's state with the database: the rows of these
--    tables, and the sequences behind their ids. Positions
--    (tributary.worker_progress) are not dumped: they belong to one
--    cluster's WAL.
SELECT pg_catalog.pg_extension_config_dump('tributary.tracked', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.tombstones', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.peers', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.conflicts', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.conflicts_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.pending', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.pending_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.policies', '');
SELECT pg_catalog.pg_extension_config_dump('tributary.queues', '');
