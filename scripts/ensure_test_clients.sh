#!/usr/bin/env bash
# The real clients the serve-sql tests connect with: psql, the PostgreSQL JDBC driver (what Tableau,
# Metabase and DBeaver use) run by a JDK's single-file launcher, and psqlODBC (Excel, PowerBI's ODBC path). Debian packages; CI installs them.
set -euo pipefail
missing=()
command -v psql >/dev/null || missing+=(postgresql-client)
command -v java >/dev/null || missing+=(default-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
# psqlODBC and the unixODBC driver manager (pyodbc loads libodbc.so.2)
[ -n "$(find /usr/lib -name psqlodbcw.so 2>/dev/null | head -1)" ] || missing+=(odbc-postgresql)
command -v odbcinst >/dev/null || missing+=(unixodbc)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the serve-sql tests need: ${missing[*]} (Debian/Ubuntu packages)" >&2
    exit 1
  fi
fi
