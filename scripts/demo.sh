#!/usr/bin/env bash
# The demo: a throwaway PostgreSQL 15 cluster with the tributary extension,
# two tracked tables, and a scripted session showing changes arriving through
# sync_changes_since and sync_payload, including a late commit of a
# transaction that took its xid first. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/cluster.sh

DIR=$(mktemp -d /tmp/tributary-demo-XXXX)
trap 'cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
cluster_start "$DIR"

h() { printf '\n\033[1;34m## %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
q() { echo "tributary=# $1"; psql -X -q -P pager=off -v ON_ERROR_STOP=1 -d demo -c "$1"; }
val() { psql -X -q -At -v ON_ERROR_STOP=1 -d demo -c "$1"; }

psql -X -q -c "CREATE DATABASE demo"
h "1. Install the extension and track two tables"
q "CREATE EXTENSION tributary"
q "CREATE TABLE customers (external_id text PRIMARY KEY, full_name text, email text);
   CREATE TABLE orders (id int PRIMARY KEY, customer_id text REFERENCES customers, total numeric);
   INSERT INTO customers VALUES ('CUST-001', 'Ada Lovelace', 'ada@example.com'),
                                ('CUST-002', 'Alan Turing', 'alan@example.com');
   SELECT sync_track('customers'); SELECT sync_track('orders');"
q "SELECT tbl, pk_columns FROM sync_tracked_tables()"

h "2. A new offline client asks for its first payload (version 0 -> Full)"
q "SELECT jsonb_pretty(sync_payload('customers', 0))"
V0=$(val "SELECT sync_payload('customers', 0) -> 'Metadata' -> 'Sync' ->> 'Version'")
note "The client stores Version = $V0 and sends it next time."

h "3. The app writes: an insert, an update (twice) and a delete"
q "INSERT INTO customers VALUES ('CUST-003', 'Grace Hopper', 'grace@example.com');
   UPDATE customers SET email = 'ada@lovelace.example' WHERE external_id = 'CUST-001';
   UPDATE customers SET full_name = 'Ada King' WHERE external_id = 'CUST-001';
   DELETE FROM customers WHERE external_id = 'CUST-002';"
q "SELECT external_id, sync_version FROM customers ORDER BY 1"
note "sync_version is the row's revision: usable as an ETag (UPDATE ... WHERE sync_version = \$etag)."

h "4. The client pulls the net changes since its version"
q "SELECT op, pk, data, row_version, changed_columns FROM sync_changes_since($V0) ORDER BY pk"
q "SELECT jsonb_pretty(sync_payload('customers', $V0))"

h "5. A late commit: T1 takes the older xid first, T2 commits first"
LAST=$(val "SELECT sync_current_version()")
# A gate session holds an advisory lock; T1 writes, then waits on the gate.
psql -X -q -d demo -c "SET application_name = 'demo-gate'; SELECT pg_advisory_lock(42); SELECT pg_sleep(600)" >/dev/null 2>&1 &
until [ "$(val "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")" = 1 ]; do sleep 0.1; done
psql -X -q -d demo -c "SET application_name = 'demo-T1'" -c "BEGIN; INSERT INTO orders VALUES (1, 'CUST-001', 99.50); SELECT pg_advisory_xact_lock(42); COMMIT;" >/dev/null 2>&1 &
T1=$!
until [ "$(val "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'demo-T1' AND backend_xid IS NOT NULL AND wait_event_type = 'Lock'")" = 1 ]; do sleep 0.1; done
note "T1 has inserted order 1 (xid $(val "SELECT backend_xid FROM pg_stat_activity WHERE application_name = 'demo-T1'")) and is still open."
q "INSERT INTO orders VALUES (2, 'CUST-003', 12.00)  -- T2, a later xid, commits now"
V1=$(val "SELECT sync_current_version()")
q "SELECT op, pk FROM sync_changes_since($LAST, $V1)  -- the reader polls"
note "Nothing yet: the version ($V1) cannot pass T1's running xid, so T2's change waits with it."
q "SELECT held_back_by, kind, application_name, state FROM sync_version_lag() LIMIT 1"
val "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'demo-gate'" >/dev/null
wait "$T1" || true
note "T1 committed."
V2=$(val "SELECT sync_current_version()")
q "SELECT op, pk, data FROM sync_changes_since($LAST, $V2) ORDER BY pk"
note "Both orders arrive, each exactly once. A timestamp or sequence cursor would have skipped order 1."

h "6. Origins: a peer's own writes are not sent back to it"
q "SET tributary.origin = 'crm'; UPDATE customers SET email = 'grace@navy.example' WHERE external_id = 'CUST-003'"
V3=$(val "SELECT sync_current_version()")
q "SELECT op, pk, origin FROM sync_changes_since($V2, $V3)"
q "SELECT count(*) AS for_crm FROM sync_changes_since($V2, $V3, skip_origin => 'crm')"

h "7. Retention: a client older than the purged tombstones gets Full, never a partial diff"
q "SET tributary.retention = '0'; SELECT sync_cleanup() AS tombstones_purged"
q "SELECT sync_min_valid_version('customers') > $V0 AS min_valid_raised"
q "SELECT sync_payload('customers', $V0) -> 'Metadata' AS answer_for_old_client"

h "Summary"
echo "  tracked tables:   $(val "SELECT string_agg(tbl::text, ', ') FROM sync_tracked_tables()")"
echo "  current version:  $(val "SELECT sync_current_version()")"
echo "  customers:        $(val "SELECT count(*) FROM customers") rows, orders: $(val "SELECT count(*) FROM orders") rows"
echo "  client protocol:  v := sync_current_version(); SELECT * FROM sync_changes_since(last, v); last := v"
echo "Demo finished; the throwaway cluster in $DIR is stopped and removed."
