#!/usr/bin/env bash
# Start a loopback S3 endpoint (moto's server from the project venv, `make install` first) for the tests,
# in the background, and print its URL. Idempotent: a server already answering on the port is reused.
# Objects live in the server's memory only; the tests use dummy credentials (`testing`).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${MEDLAKE_S3_PORT:-55900}"
LOG="${MEDLAKE_S3_LOG:-/tmp/medlake-s3-${PORT}.log}"
URL="http://127.0.0.1:${PORT}"
SERVER=".venv/bin/moto_server"
if [ ! -x "$SERVER" ]; then echo "$SERVER not found: run \`make install\` first" >&2; exit 1; fi
# Plain Python from the venv, so the script needs no curl.
answers() {
  .venv/bin/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "${URL}/" >/dev/null 2>&1
}
if ! answers; then
  nohup "$SERVER" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
  for _ in $(seq 1 150); do answers && break; sleep 0.2; done
  if ! answers; then
    echo "moto_server did not answer on ${URL}; log: ${LOG}" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
fi
echo "$URL"
