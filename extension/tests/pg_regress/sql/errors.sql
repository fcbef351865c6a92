-- Bad input: every error has a SQLSTATE, a message, a DETAIL and a HINT.
\set SHOW_CONTEXT never
\set ON_ERROR_ROLLBACK on
BEGIN;
CREATE TABLE nopk (v text);
CREATE TABLE untracked (id int PRIMARY KEY);
CREATE TABLE clash (id int PRIMARY KEY, sync_version text);
CREATE TABLE t (id int PRIMARY KEY);
SELECT sync_track('t');
SELECT sync_track('nopk');
\echo :LAST_ERROR_SQLSTATE
SELECT sync_track('clash');
\echo :LAST_ERROR_SQLSTATE
SELECT sync_track(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(0, tables => ARRAY['untracked'::regclass]);
\echo :LAST_ERROR_SQLSTATE
SELECT sync_payload('untracked', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(10, 5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(1, page_size => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM sync_changes_since(1, page_size => 10, after_tbl => 't');
\echo :LAST_ERROR_SQLSTATE
SELECT sync_payload('t', NULL);
\echo :LAST_ERROR_SQLSTATE
-- a version from the future (the numbers vary from run to run: masked)
DO $$
DECLARE st text; msg text; det text; hin text;
BEGIN
    PERFORM * FROM sync_changes_since(sync_current_version() + 1000);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL, hin = PG_EXCEPTION_HINT;
    RAISE NOTICE E'%: %\nDETAIL: %\nHINT: %', st, msg, regexp_replace(det, '[0-9]+', 'N', 'g'), hin;
END $$;
SET tributary.retention = 'forever';
SELECT sync_cleanup();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
