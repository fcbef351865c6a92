#!/usr/bin/env bash
# The demo, end to end: a throwaway PostgreSQL 15 hub with the tributary
# extension, the worker, two SQLite peers (edge1, edge2), an outbound queue
# (audit) and a remote device (the edge client, over the worker's HTTP
# gateway, with its region's rows only). Writes on the hub and on a peer
# arrive everywhere; offline edits conflict and are resolved (priority,
# field merge, manual); an order is parked until its customer arrives.
# Every outcome it shows is also checked: a wrong one exits non-zero.
# Installs what is missing first, and leaves the files in place to inspect.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/cluster.sh
WORKER=$PWD/target/release/tributary-worker
EDGE=$PWD/target/release/tributary-edge
# The gateway's HS256 secret; the device's token is signed with it below.
export TRIBUTARY_GATEWAY_JWT_SECRET=demo-secret-0123456789abcdef-0123456789

DIR=$(mktemp -d /tmp/tributary-demo-XXXX)
chmod 755 "$DIR"
WPID=
DPID=
finish() {
  # The edge client needs no graceful stop (each step is a transaction).
  if [ -n "$DPID" ]; then kill -TERM "$DPID" 2>/dev/null; wait "$DPID" 2>/dev/null || true; fi
  [ -n "$WPID" ] && kill -TERM "$WPID" 2>/dev/null && wait "$WPID" 2>/dev/null
  cluster_stop "$DIR/pg"
}
trap finish EXIT
mkdir -p "$DIR/pg"
cluster_start "$DIR/pg"
START=$(date +%s)

h() { printf '\n\033[1;34m## %s\033[0m\n' "$*"; }
FAILED=0
# check "what" ACTUAL EXPECTED: says whether what the demo shows is what it
# should be; the demo exits non-zero at the end if anything was not.
check() {
  if [ "$2" = "$3" ]; then printf '  \033[32mok\033[0m  %s\n' "$1"
  else printf '  \033[31mNO\033[0m  %s: got %s, expected %s\n' "$1" "$2" "$3"; FAILED=$((FAILED + 1)); fi
}
note() { printf '\033[2m%s\033[0m\n' "$*"; }
q() { echo "hub=# $1"; psql -X -q -P pager=off -v ON_ERROR_STOP=1 -d demo -c "$1"; }
val() { psql -X -q -At -v ON_ERROR_STOP=1 -d demo -c "$1"; }
# The peers' files are in use by the worker and the edge client: wait for
# their locks, as a well-behaved app does.
lite() { local db=$1; shift; echo "$db> $*"; sqlite3 -cmd ".timeout 5000" -header -column "$DIR/$db.db" "$@"; }
liteval() { sqlite3 -cmd ".timeout 5000" "$DIR/$1.db" "$2"; }
# wait_for "what" 'shell condition'
wait_for() {
  local what=$1 cond=$2 end=$((SECONDS + 30))
  until eval "$cond" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "timed out waiting for $what"; tail -20 "$DIR/worker.log"; tail -20 "$DIR/device.log" 2>/dev/null; exit 1; }
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
   CREATE TABLE visits (id int PRIMARY KEY, region text NOT NULL, customer_id text, note text);
   INSERT INTO visits VALUES (1, 'north', 'CUST-001', 'first visit'), (2, 'south', 'CUST-002', 'south only'),
                             (3, 'north', 'CUST-002', 'follow-up');
   SELECT sync_track('customers'), sync_track('orders'), sync_track('heartbeat'), sync_track('visits');
   SELECT sync_set_peer('crm', 1);"
note "Remote devices sync over HTTP through the gateway, as a role that holds no data privileges;"
note "a device speaks through its own role, and sees the visits of the region its token names:"
q "CREATE ROLE tributary_gateway LOGIN NOINHERIT; SELECT sync_gateway_grant('tributary_gateway');
   CREATE ROLE device NOLOGIN; GRANT device TO tributary_gateway;
   GRANT SELECT, INSERT, UPDATE, DELETE ON visits TO device;
   GRANT EXECUTE ON FUNCTION sync_apply(regclass, jsonb, text) TO device;
   SELECT sync_set_filter('visits', \$\$region = sync_claim('region')\$\$);
   SELECT sync_set_peer('tablet-north', 3, 'device');"
note "The worker runs as a REPLICATION role, not a superuser, and speaks for the SQLite peers it serves."
note "Lower number = higher priority:"
q "CREATE ROLE tributary_worker LOGIN REPLICATION;
   SELECT sync_queue_create('audit'); SELECT sync_worker_grant('tributary_worker');
   SELECT sync_set_peer('edge1', 1, 'tributary_worker'), sync_set_peer('edge2', 2, 'tributary_worker');"

h "2. The worker: two SQLite peers, an outbound queue, and the HTTP gateway"
GW_PORT=$(free_port)
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
tables = ["public.customers", "public.orders", "public.heartbeat", "public.visits"]
[[destination]]
name = "edge2"
kind = "sqlite"
path = "$DIR/edge2.db"
tables = ["public.customers", "public.orders", "public.heartbeat", "public.visits"]
[[destination]]
name = "audit"
kind = "queue"
tables = ["public.customers", "public.orders"]
[gateway]
listen = "127.0.0.1:$GW_PORT"
database_url = "postgres://tributary_gateway@127.0.0.1:$PGPORT/demo"
watch_interval_ms = 20
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
check "edge2 holds the hub's new customer" "$(liteval edge2 "SELECT full_name FROM customers WHERE external_id = 'CUST-003'")" "Grace Hopper"
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
check "the hub has edge1's edit, as edge1's" "$(val "SELECT email || ' ' || sync_origin FROM customers WHERE external_id = 'CUST-001'")" "ada@lovelace.example edge1"
check "edge2 has edge1's edit" "$(liteval edge2 "SELECT email FROM customers WHERE external_id = 'CUST-001'")" "ada@lovelace.example"

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
for p in hub edge1 edge2; do
  if [ $p = hub ]; then get=val; else get="liteval $p"; fi
  check "$p: CUST-002 went to edge1 (priority)" "$($get "SELECT full_name FROM customers WHERE external_id = 'CUST-002'")" "Alan M. Turing"
  check "$p: CUST-003 merged edge2's name and the hub's email" "$($get "SELECT full_name || ', ' || email FROM customers WHERE external_id = 'CUST-003'")" "Grace B. Hopper, grace@navy.example"
done
check "one open conflict at the hub, edge1's" "$(val "SELECT count(*) || ' ' || min(remote_origin) FROM sync_conflicts WHERE status = 'open'")" "1 edge1"
check "edge1's app sees it" "$(liteval edge1 "SELECT outcome FROM _tributary_errors")" "MANUAL"

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
check "the parked order landed, at the hub and at edge1" "$(val 'SELECT count(*) FROM orders WHERE id = 500')$(liteval edge1 'SELECT count(*) FROM orders WHERE id = 500')" "11"
check "nothing still parked" "$(val "SELECT count(*) FROM sync_pending WHERE status = 'pending'")" "0"

h "7. A remote device over HTTP: the edge client, with its region's visits only"
note "Its token (HS256, signed with the gateway's secret) names the peer and its region:"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
jwt() {
  local head body sig
  head=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
  body=$(printf '{"sub":"%s","region":"%s","exp":%d}' "$1" "$2" $(( $(date +%s) + 3600 )) | b64url)
  sig=$(printf '%s.%s' "$head" "$body" | openssl dgst -sha256 -hmac "$TRIBUTARY_GATEWAY_JWT_SECRET" -binary | b64url)
  echo "$head.$body.$sig"
}
jwt tablet-north north >"$DIR/device.token"
echo '    {"sub": "tablet-north", "region": "north", "exp": <in an hour>}'
dev() { echo "device\$ tributary-edge $1 ..."; "$EDGE" "$@" --token-file "$DIR/device.token"; }
dev init --hub "http://127.0.0.1:$GW_PORT" --db "$DIR/device.db"
dev sync --db "$DIR/device.db"
lite device "SELECT * FROM visits ORDER BY id"
check "the device holds the north visits only" "$(liteval device 'SELECT group_concat(id) FROM (SELECT id FROM visits ORDER BY id)')" "1,3"
note "It runs as a daemon: hub changes arrive by long poll, the app's edits go out as they are made."
"$EDGE" run --db "$DIR/device.db" --token-file "$DIR/device.token" --interval 30s >"$DIR/device.log" 2>&1 &
DPID=$!
lite device "UPDATE visits SET note = 'brought samples' WHERE id = 3"
wait_for "the device's edit at the hub" "[ \"\$(val 'SELECT note FROM visits WHERE id = 3')\" = 'brought samples' ]"
synced
q "SELECT id, region, note, sync_origin FROM visits ORDER BY id"
lite edge1 "SELECT * FROM visits ORDER BY id"
check "the hub has the device's edit, as the device's" "$(val 'SELECT note || '"' '"' || sync_origin FROM visits WHERE id = 3')" "brought samples tablet-north"
check "edge1 has the device's edit" "$(liteval edge1 'SELECT note FROM visits WHERE id = 3')" "brought samples"
lite edge2 "UPDATE visits SET note = 'called ahead' WHERE id = 1;
            INSERT INTO visits VALUES (4, 'south', 'CUST-003', 'not for the north')"
outboxes_empty
wait_for "edge2's edit on the device" "[ \"\$(liteval device 'SELECT note FROM visits WHERE id = 1')\" = 'called ahead' ]"
lite device "SELECT * FROM visits ORDER BY id"
check "the device got edge2's edit of a north visit" "$(liteval device 'SELECT note FROM visits WHERE id = 1')" "called ahead"
check "and not the south visit edge2 added with it" "$(liteval device "SELECT count(*) FROM visits WHERE region <> 'north'")" "0"
check "while the hub and edge1 have all four" "$(val 'SELECT count(*) FROM visits')$(liteval edge1 'SELECT count(*) FROM visits')" "44"

h "Summary"
for p in edge1 edge2; do
  echo "  $p: $(liteval $p 'SELECT count(*) FROM customers') customers, $(liteval $p 'SELECT count(*) FROM orders') orders, $(liteval $p 'SELECT count(*) FROM _tributary_errors') entries in _tributary_errors"
done
echo "  hub:   $(val 'SELECT count(*) FROM customers') customers, $(val 'SELECT count(*) FROM orders') orders, $(val 'SELECT count(*) FROM sync_conflicts') conflict(s) logged"
echo "  queue: $(val "SELECT ready + leased FROM sync_queue_stats('audit')") change(s) for consumers of 'audit'"
same=$(diff <(liteval edge1 'SELECT * FROM customers ORDER BY 1') <(liteval edge2 'SELECT * FROM customers ORDER BY 1') >/dev/null && echo yes || echo NO)
echo "  edge1 and edge2 hold the same customers: $same"
echo "  device: $(liteval device 'SELECT count(*) FROM visits') visits (its region's), $(liteval device 'SELECT count(*) FROM _tributary_outbox') unsent"
check "edge1 and edge2 hold the same customers" "$same" "yes"
echo "  took $(( $(date +%s) - START )) s"
echo
echo "Files left to inspect in $DIR:"
echo "  edge1.db, edge2.db   sqlite3 -cmd '.timeout 5000' $DIR/edge1.db 'SELECT * FROM customers'"
echo "  device.db            tributary-edge status --db $DIR/device.db"
echo "  worker.toml, worker.log, device.log"
echo "  pg/                  the hub's data directory (stopped)"
if [ "$FAILED" -gt 0 ]; then
  echo "$FAILED check(s) did not hold: see NO above" >&2
  exit 1
fi
