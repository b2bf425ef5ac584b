#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 for the production-path tests and print its URL.
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
set -euo pipefail
PORT="${MEDLAKE_PG_PORT:-55432}"
DATA="${MEDLAKE_PG_DATA:-/tmp/medlake-pg}"
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$BIN" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  else
    echo "PostgreSQL server binaries not found" >&2; exit 1
  fi
fi
as_pg() { if [ "$(id -u)" = "0" ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"
  [ "$(id -u)" = "0" ] && chown postgres:postgres "$DATA"
  as_pg "$BIN/initdb" -D "$DATA" -U medlake --auth=trust >/dev/null
fi
if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  as_pg "$BIN/pg_ctl" -D "$DATA" -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1" -l "$DATA/server.log" -w start >/dev/null
fi
as_pg "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U medlake -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='medlake_test'" | grep -q 1 \
  || as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U medlake medlake_test
echo "postgresql+psycopg2://medlake@127.0.0.1:${PORT}/medlake_test"
