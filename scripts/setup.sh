#!/usr/bin/env bash
# Installs whatever is missing on a Debian 12 machine, then builds and
# installs the extension into the system PostgreSQL 15. Safe to run again:
# each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo sqlite3 nats-server python3 python3-venv openssl)
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packaged cluster is not used; our scripts start throwaway ones.
  as_root systemctl disable --now postgresql >/dev/null 2>&1 || true
fi

command -v cargo >/dev/null || { echo "cargo is required (rustup)"; exit 1; }

if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
  say "cargo-pgrx $PGRX_VERSION: installing (about 6 minutes, once)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi

if ! grep -qs "pg15 *= *\"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  say "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# A real T-SQL parser for the SQL Server peer's golden files (PyPI, pinned),
# in a venv of its own under target/ (Debian's python refuses pip installs).
SQLGLOT_VERSION=30.31.0
if ! target/tools-venv/bin/python -c "import sqlglot, sys; sys.exit(sqlglot.__version__ != '$SQLGLOT_VERSION')" 2>/dev/null; then
  say "sqlglot $SQLGLOT_VERSION: installing into target/tools-venv"
  rm -rf target/tools-venv
  python3 -m venv target/tools-venv
  target/tools-venv/bin/pip install -q "sqlglot==$SQLGLOT_VERSION"
fi

say "building and installing the tributary extension (release)"
sudo_flag=(); [ "$(id -u)" = 0 ] || sudo_flag=(--sudo)
cargo pgrx install --release -p tributary --pg-config "$PG_CONFIG" "${sudo_flag[@]}" >/tmp/tributary-install.log 2>&1 \
  || { cat /tmp/tributary-install.log; exit 1; }
# The released install scripts too (cargo pgrx install copies only the
# upgrade scripts, tributary--A--B.sql): a hub can be created at an older
# release and brought up to date with ALTER EXTENSION tributary UPDATE.
as_root install -m 644 extension/sql/tributary--*.sql "$($PG_CONFIG --sharedir)/extension/"
say "building the worker (release)"
cargo build -q --release -p tributary-worker -p tributary-edge
say "setup done"
