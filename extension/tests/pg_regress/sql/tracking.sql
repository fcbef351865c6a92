-- sync_track / sync_untrack: columns, triggers, publication, idempotence.
\set SHOW_CONTEXT never
BEGIN;
CREATE TABLE customers (external_id text PRIMARY KEY, full_name text, email text);
INSERT INTO customers VALUES ('CUST-001', 'Ada', 'ada@example.com');
SELECT sync_track('customers');
SELECT sync_track('customers');  -- idempotent
SELECT attname, format_type(atttypid, atttypmod) AS type
  FROM pg_attribute WHERE attrelid = 'customers'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'customers'::regclass ORDER BY tgname;
SELECT tbl, pk_columns, min_valid_version, min_valid_reason FROM sync_tracked_tables();
SELECT tablename FROM pg_publication_tables WHERE pubname = 'tributary';
-- rows present at tracking time are revision 1
SELECT external_id, sync_version, sync_origin FROM customers;
UPDATE customers SET email = 'ada@new.example' WHERE external_id = 'CUST-001';
SELECT external_id, sync_version FROM customers;
-- the revision is an ETag
UPDATE customers SET full_name = 'stale' WHERE external_id = 'CUST-001' AND sync_version = 1;
SELECT full_name FROM customers;
SELECT e.attnum, e.revision FROM customers, tributary.colmeta_entries(sync_colmeta) e;
SELECT sync_untrack('customers');
SELECT count(*) AS tracking_columns_left FROM pg_attribute
 WHERE attrelid = 'customers'::regclass AND attname LIKE 'sync\_%' AND NOT attisdropped;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'customers'::regclass;
SELECT count(*) AS tracked FROM sync_tracked_tables();
ROLLBACK;

-- hostile identifiers
BEGIN;
CREATE SCHEMA "we""ird";
CREATE TABLE "we""ird"."tab'le" ("]" int PRIMARY KEY, "x""y" text);
SELECT sync_track('"we""ird"."tab''le"');
INSERT INTO "we""ird"."tab'le" VALUES (1, 'one');
UPDATE "we""ird"."tab'le" SET "x""y" = 'uno';
SELECT "]", "x""y", sync_version FROM "we""ird"."tab'le";
SELECT tbl, pk_columns FROM sync_tracked_tables();
ROLLBACK;
