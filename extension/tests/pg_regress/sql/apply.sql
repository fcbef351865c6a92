-- sync_apply: the acceptance ladder, conflicts, dependencies and bad input.
\set SHOW_CONTEXT never
BEGIN;
CREATE TABLE customers (external_id text PRIMARY KEY, full_name text, email text);
SELECT sync_track('customers');
SELECT sync_set_peer('CRM', 1), sync_set_peer('ERP', 2), sync_set_peer('Portal', 3), sync_set_peer('LocalDB', 4);
SELECT name, priority FROM tributary.peers ORDER BY priority;
-- CUST-001: same version, the better priority wins
SELECT pk, outcome, row_version FROM sync_apply('customers', '[{"op":"I","pk":{"external_id":"CUST-001"},"data":{"full_name":"Erp Name","email":"one@x"},"version":1}]', 'ERP');
SELECT pk, outcome, row_version, detail FROM sync_apply('customers', '[{"op":"I","pk":{"external_id":"CUST-001"},"data":{"full_name":"Crm Name","email":"one@x"},"version":1}]', 'CRM');
-- CUST-002: an older version is skipped
SELECT outcome FROM sync_apply('customers', '[{"op":"I","pk":{"external_id":"CUST-002"},"data":{"full_name":"Crm One"},"version":1},
                                              {"op":"U","pk":{"external_id":"CUST-002"},"data":{"full_name":"Crm Two"},"version":2}]', 'CRM');
SELECT outcome, detail FROM sync_apply('customers', '[{"op":"U","pk":{"external_id":"CUST-002"},"data":{"full_name":"Portal Two"},"version":1}]', 'Portal');
-- CUST-003: disjoint columns from the same base merge
SELECT outcome FROM sync_apply('customers', '[{"op":"I","pk":{"external_id":"CUST-003"},"data":{"full_name":"Old","email":"old@x"},"version":1}]', 'LocalDB');
SELECT outcome FROM sync_apply('customers', '[{"op":"U","pk":{"external_id":"CUST-003"},"data":{"full_name":"New"},"version":2}]', 'CRM');
SELECT outcome, detail FROM sync_apply('customers', '[{"op":"U","pk":{"external_id":"CUST-003"},"data":{"email":"new@x"},"version":2}]', 'ERP');
-- CUST-004: equal version and priority: MANUAL, logged
SELECT outcome, conflict_id IS NOT NULL AS logged, detail FROM sync_apply('customers',
  '[{"op":"U","pk":{"external_id":"CUST-004"},"data":{"email":"a"},"version":1},
    {"op":"U","pk":{"external_id":"CUST-004"},"data":{"email":"b"},"version":1}]', 'CRM');
-- CUST-005: a first write
SELECT outcome FROM sync_apply('customers', '[{"op":"I","pk":{"external_id":"CUST-005"},"data":{"full_name":"Five"},"version":1}]', 'Portal');
SELECT external_id, full_name, email, sync_version, sync_origin FROM customers ORDER BY 1;
SELECT tbl, pk, columns, local, remote, interim, status FROM sync_conflicts;
SELECT sync_resolve_conflict((SELECT id FROM sync_conflicts), '{"email": "merged@x"}') IS NOT NULL AS resolved;
SELECT external_id, email, sync_version, sync_origin FROM customers WHERE external_id = 'CUST-004';
SELECT status, resolution FROM sync_conflicts;
-- a revision claimed beyond the hub's next: the batch is refused whole
SAVEPOINT claimed;
SELECT outcome FROM sync_apply('customers', '[{"op":"U","pk":{"external_id":"CUST-005"},"data":{"full_name":"forged"},"version":1000000}]', 'ERP');
ROLLBACK TO SAVEPOINT claimed;
-- a delete, then a stale update that must not resurrect the row
SELECT outcome FROM sync_apply('customers', '[{"op":"D","pk":{"external_id":"CUST-005"},"version":2}]', 'ERP');
SELECT outcome, detail FROM sync_apply('customers', '[{"op":"U","pk":{"external_id":"CUST-005"},"data":{"full_name":"zombie"},"version":1}]', 'Portal');
SELECT count(*) AS cust_005_rows FROM customers WHERE external_id = 'CUST-005';
ROLLBACK;

-- an Order before its Client
BEGIN;
CREATE TABLE clients (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, client_id int REFERENCES clients, total numeric);
SELECT sync_track('clients'), sync_track('orders');
SELECT outcome, detail FROM sync_apply('orders', '[{"op":"I","pk":{"id":1},"data":{"client_id":7,"total":9.50},"version":1}]', 'ERP');
SELECT tbl, pk, waiting_for, attempts, status FROM sync_pending;
SELECT outcome FROM sync_apply('clients', '[{"op":"I","pk":{"id":7},"data":{"name":"Ada"},"version":1}]', 'ERP');
SELECT id, client_id, total FROM orders;
SELECT count(*) AS still_pending FROM sync_pending;
ROLLBACK;

-- bad input: nothing of the batch is applied
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE t (id int PRIMARY KEY, n int);
SELECT sync_track('t');
SELECT * FROM sync_apply('t', '{"op":"I"}', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[{"op":"I","pk":{"id":1},"data":{"n":1},"version":1}, {"op":"X","pk":{"id":2},"data":{},"version":1}]', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[{"op":"U","pk":{"id":1},"data":{"nope":1},"version":1}]', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[{"op":"U","pk":{"id":1},"data":{"n":"lots"},"version":1}]', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[{"op":"U","pk":{"key":1},"data":{},"version":1}]', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[{"op":"U","pk":{"id":1},"data":{},"version":0}]', 'CRM');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_apply('t', '[]', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS rows_applied FROM t;
ROLLBACK;
