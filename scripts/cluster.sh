#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for the demo and the benches.
#   source scripts/cluster.sh; cluster_start DIR   -> exports PGHOST PGPORT PGUSER PGDATABASE
#   cluster_stop DIR
# initdb refuses root, so the cluster runs as the `postgres` OS user when we are root.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

_as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cluster_start() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  chmod 700 "$dir"
  _as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log"; return 1; }
  cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_prepared_transactions = 10
fsync = on
CONF
  echo "host replication all 127.0.0.1/32 trust" >>"$dir/data/pg_hba.conf"
  _as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null \
    || { cat "$dir/server.log"; return 1; }
  export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
}

cluster_stop() {
  local dir=$1
  [ -d "$dir/data" ] && _as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}
