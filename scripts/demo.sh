#!/usr/bin/env bash
# The demo, end to end: a throwaway PostgreSQL 15 hub with the tributary
# extension, the worker, two SQLite peers (edge1, edge2) and an outbound
# queue (audit). Writes on the hub and on a peer arrive everywhere; offline
# edits conflict and are resolved (priority, field merge, manual); an order
# is parked until its customer arrives. Installs what is missing first, and
# leaves the files in place to inspect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/cluster.sh
WORKER=$PWD/target/release/tributary-worker

DIR=$(mktemp -d /tmp/tributary-demo-XXXX)
chmod 755 "$DIR"
WPID=
finish() {
  [ -n "$WPID" ] && kill -TERM "$WPID" 2>/dev/null && wait "$WPID" 2>/dev/null
  cluster_stop "$DIR/pg"
}
trap finish EXIT
mkdir -p "$DIR/pg"
cluster_start "$DIR/pg"
START=$(date +%s)

h() { printf '\n\033[1;34m## %s\033[0m\n' "$*"; }
note() { printf '\033[2m%s\033[0m\n' "$*"; }
q() { echo "hub=# $1"; psql -X -q -P pager=off -v ON_ERROR_STOP=1 -d demo -c "$1"; }
val() { psql -X -q -At -v ON_ERROR_STOP=1 -d demo -c "$1"; }
lite() { local db=$1; shift; echo "$db> $*"; sqlite3 -header -column "$DIR/$db.db" "$@"; }
liteval() { sqlite3 "$DIR/$1.db" "$2"; }
# wait_for "what" 'shell condition'
wait_for() {
  local what=$1 cond=$2 end=$((SECONDS + 30))
  until eval "$cond" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "timed out waiting for $what"; tail -20 "$DIR/worker.log"; exit 1; }
    sleep 0.1
  done
}
# Everything the hub committed so far has reached both peers: a heartbeat
# written after it has, by their stored positions.
synced() {
  local target p end lsn
  target=$(val "SELECT pg_current_wal_lsn()")
  val "INSERT INTO heartbeat DEFAULT VALUES" >/dev/null
  for p in edge1 edge2; do
    end=$((SECONDS + 30))
    while :; do
      lsn=$(liteval $p "SELECT lsn FROM _tributary_state" 2>/dev/null || true)
      [ "$(val "SELECT '${lsn:-0/0}'::pg_lsn > '$target'::pg_lsn")" = t ] && break
      [ $SECONDS -lt $end ] || { echo "timed out waiting for $p"; tail -20 "$DIR/worker.log"; exit 1; }
      sleep 0.1
    done
  done
}
outboxes_empty() {
  wait_for "the peers' outboxes to drain" \
    "[ \"\$(liteval edge1 'SELECT count(*) FROM _tributary_outbox')\$(liteval edge2 'SELECT count(*) FROM _tributary_outbox')\" = 00 ]"
}
start_worker() {
  "$WORKER" run --config "$DIR/worker.toml" >>"$DIR/worker.log" 2>&1 &
  WPID=$!
}

psql -X -q -c "CREATE DATABASE demo"

h "1. The hub: customers and orders, tracked; peers and their priorities"
q "CREATE EXTENSION tributary;
   CREATE TABLE customers (external_id text PRIMARY KEY, full_name text, email text);
   CREATE TABLE orders (id int PRIMARY KEY, customer_id text REFERENCES customers, total numeric);
   CREATE TABLE heartbeat (id serial PRIMARY KEY);
   INSERT INTO customers VALUES ('CUST-001', 'Ada Lovelace', 'ada@example.com'),
                                ('CUST-002', 'Alan Turing', 'alan@example.com');
   SELECT sync_track('customers'), sync_track('orders'), sync_track('heartbeat');
   SELECT sync_set_peer('crm', 1);"
note "The worker runs as a REPLICATION role, not a superuser, and speaks for the SQLite peers it serves."
note "Lower number = higher priority:"
q "CREATE ROLE tributary_worker LOGIN REPLICATION;
   SELECT sync_queue_create('audit'); SELECT sync_worker_grant('tributary_worker');
   SELECT sync_set_peer('edge1', 1, 'tributary_worker'), sync_set_peer('edge2', 2, 'tributary_worker');"

h "2. The worker: two SQLite peers and an outbound queue"
cat >"$DIR/worker.toml" <<TOML
[source]
url = "postgres://tributary_worker@127.0.0.1:$PGPORT/demo"
slot = "tributary"
[http]
listen = "127.0.0.1:$(free_port)"
[[destination]]
name = "edge1"
kind = "sqlite"
path = "$DIR/edge1.db"
tables = ["public.customers", "public.orders", "public.heartbeat"]
[[destination]]
name = "edge2"
kind = "sqlite"
path = "$DIR/edge2.db"
tables = ["public.customers", "public.orders", "public.heartbeat"]
[[destination]]
name = "audit"
kind = "queue"
tables = ["public.customers", "public.orders"]
TOML
"$WORKER" check-config --config "$DIR/worker.toml" | sed 's/^/    /'
start_worker
wait_for "the initial copies" "[ \"\$(grep -c 'initial copy sent' '$DIR/worker.log')\" = 2 ]"
note "Each new peer got a consistent copy first, joined to the stream without a gap:"
grep -o 'initial copy: table done.*' "$DIR/worker.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/    /' | head -4
lite edge1 "SELECT * FROM customers"

h "3. The hub writes; the change arrives at both peers and in the queue"
q "INSERT INTO customers VALUES ('CUST-003', 'Grace Hopper', 'grace@example.com')"
synced
lite edge2 "SELECT * FROM customers WHERE external_id = 'CUST-003'"
q "SELECT id, op, tbl, pk, data ->> 'full_name' AS full_name, origin FROM sync_queue_read('audit', 10)"

h "4. An app writes on edge1; the hub and edge2 get it, edge1 gets no echo"
lite edge1 "UPDATE customers SET email = 'ada@lovelace.example' WHERE external_id = 'CUST-001';
            SELECT tbl, pk, op, data FROM _tributary_outbox"
note "Captured by edge1's triggers. The worker sends it to sync_apply(..., origin => 'edge1'):"
outboxes_empty
synced
q "SELECT external_id, email, sync_origin FROM customers WHERE external_id = 'CUST-001'"
lite edge2 "SELECT external_id, email FROM customers WHERE external_id = 'CUST-001'"
q "SELECT op, pk, data ->> 'email' AS email, origin FROM sync_queue_read('audit', 10)"
note "edge1 wrote it, so the stream does not send it back to edge1 (the queue still gets it, tagged)."

h "5. Offline edits conflict; the hub resolves them when the worker is back"
kill -TERM "$WPID"; wait "$WPID" || true; WPID=
note "The worker is stopped (SIGTERM: it finished its transaction and confirmed the slot). Meanwhile:"
V=$(val "SELECT sync_version FROM customers WHERE external_id = 'CUST-001'")
lite edge1 "UPDATE customers SET full_name = 'Alan M. Turing' WHERE external_id = 'CUST-002';  -- priority: edge1 (1) vs edge2 (2)
            UPDATE customers SET full_name = 'Ada, Countess of Lovelace' WHERE external_id = 'CUST-001'  -- manual: vs crm, same priority"
lite edge2 "UPDATE customers SET full_name = 'A. Turing' WHERE external_id = 'CUST-002';
            UPDATE customers SET full_name = 'Grace B. Hopper' WHERE external_id = 'CUST-003'  -- field merge with the hub's email change"
q "UPDATE customers SET email = 'grace@navy.example' WHERE external_id = 'CUST-003'"
q "SELECT pk ->> 'external_id' AS key, outcome FROM sync_apply('customers',
     '[{\"op\":\"U\",\"pk\":{\"external_id\":\"CUST-001\"},\"data\":{\"full_name\":\"Ada King (CRM)\"},\"version\":$((V + 1))}]', 'crm')"
start_worker
outboxes_empty
synced
q "SELECT external_id, full_name, email, sync_origin FROM customers ORDER BY 1"
lite edge1 "SELECT * FROM customers ORDER BY 1"
lite edge2 "SELECT * FROM customers ORDER BY 1"
note "CUST-002: PRIORITY_WIN, edge1's name everywhere. CUST-003: FIELD_MERGE, edge2's name and the hub's email."
note "CUST-001: MANUAL. The hub keeps a deterministic interim value and logs the conflict; edge1's app sees it:"
q "SELECT id, pk ->> 'external_id' AS key, local ->> 'full_name' AS hub_side, remote ->> 'full_name' AS remote_side, remote_origin, status FROM sync_conflicts"
lite edge1 "SELECT tbl, pk, outcome, hub_row FROM _tributary_errors"

h "6. An order arrives before its customer: parked, then applied"
q "SELECT pk, outcome, detail FROM sync_apply('orders',
     '[{\"op\":\"I\",\"pk\":{\"id\":500},\"data\":{\"id\":500,\"customer_id\":\"CUST-100\",\"total\":42.50},\"version\":1}]', 'portal')"
q "SELECT tbl, pk, waiting_for, status FROM sync_pending"
lite edge2 "INSERT INTO customers VALUES ('CUST-100', 'Katherine Johnson', 'kj@example.com')"
outboxes_empty
wait_for "the parked order" "[ \"\$(val 'SELECT count(*) FROM orders WHERE id = 500')\" = 1 ]"
synced
q "SELECT o.id, o.customer_id, c.full_name, o.total FROM orders o JOIN customers c ON c.external_id = o.customer_id"
lite edge1 "SELECT * FROM orders"
q "SELECT count(*) AS still_parked FROM sync_pending WHERE status = 'pending'"

h "Summary"
for p in edge1 edge2; do
  echo "  $p: $(liteval $p 'SELECT count(*) FROM customers') customers, $(liteval $p 'SELECT count(*) FROM orders') orders, $(liteval $p 'SELECT count(*) FROM _tributary_errors') entries in _tributary_errors"
done
echo "  hub:   $(val 'SELECT count(*) FROM customers') customers, $(val 'SELECT count(*) FROM orders') orders, $(val 'SELECT count(*) FROM sync_conflicts') conflict(s) logged"
echo "  queue: $(val "SELECT ready + leased FROM sync_queue_stats('audit')") change(s) for consumers of 'audit'"
same=$(diff <(liteval edge1 'SELECT * FROM customers ORDER BY 1') <(liteval edge2 'SELECT * FROM customers ORDER BY 1') >/dev/null && echo yes || echo NO)
echo "  edge1 and edge2 hold the same customers: $same"
echo "  took $(( $(date +%s) - START )) s"
echo
echo "Files left to inspect in $DIR:"
echo "  edge1.db, edge2.db   sqlite3 $DIR/edge1.db 'SELECT * FROM customers'"
echo "  worker.toml, worker.log"
echo "  pg/                  the hub's data directory (stopped)"
