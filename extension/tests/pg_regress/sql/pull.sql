-- The pull API: net changes, origins, paging and payloads. Windows only
-- hold committed transactions, so this file commits instead of rolling back.
\set SHOW_CONTEXT never
CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
SELECT sync_track('orders');
INSERT INTO orders VALUES (1, 'ada', 10), (2, 'bob', 20), (3, 'cy', 30);
SELECT sync_current_version() AS v1 \gset
-- a first sync: every row, as inserts
SELECT op, pk, data, row_version, changed_columns FROM sync_changes_since(0) ORDER BY pk;
UPDATE orders SET total = 11 WHERE id = 1;
DELETE FROM orders WHERE id = 2;
INSERT INTO orders VALUES (4, 'dee', 40);
UPDATE orders SET customer = 'dee2' WHERE id = 4;
SET tributary.origin = 'crm';
UPDATE orders SET total = 33 WHERE id = 3;
RESET tributary.origin;
SELECT sync_current_version() AS v2 \gset
SELECT op, pk, data, row_version, origin, changed_columns FROM sync_changes_since(:v1, :v2) ORDER BY pk;
-- the peer 'crm' is not sent its own change back
SELECT op, pk FROM sync_changes_since(:v1, :v2, skip_origin => 'crm') ORDER BY pk;
-- an empty window
SELECT count(*) FROM sync_changes_since(:v2, :v2);
-- paging: two rows at a time, continuing after the last row
SELECT op, pk FROM sync_changes_since(:v1, :v2, page_size => 2);
SELECT op, pk FROM sync_changes_since(:v1, :v2, page_size => 2, after_tbl => 'orders', after_pk => '{"id": 3}');
-- payloads (the Version number itself varies from run to run)
SELECT jsonb_pretty(sync_payload('orders', 0) #- '{Metadata,Sync,Version}');
SELECT jsonb_pretty(sync_payload('orders', :v1) #- '{Metadata,Sync,Version}');
SELECT (sync_payload('orders', :v2) -> 'Metadata' -> 'Sync' ->> 'Version')::bigint >= :v2 AS version_moves_forward;
-- retention: purge, and a reader below the minimum gets Full
SET tributary.retention = '0';
SELECT sync_cleanup() AS purged;
SELECT sync_min_valid_version('orders') > :v1 AS min_valid_raised;
SELECT (sync_payload('orders', :v1) -> 'Metadata' -> 'Sync') - 'Version' AS below_minimum, jsonb_array_length(sync_payload('orders', :v1) -> 'Data') AS rows;
-- TRUNCATE forces a full resync
TRUNCATE orders;
SELECT (sync_payload('orders', :v2) -> 'Metadata' -> 'Sync') - 'Version' AS after_truncate, jsonb_array_length(sync_payload('orders', :v2) -> 'Data') AS rows;
DROP TABLE orders;
SELECT count(*) AS tracked_after_drop FROM sync_tracked_tables();
