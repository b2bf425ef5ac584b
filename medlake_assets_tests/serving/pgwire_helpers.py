"""What the serve-sql tests share: a served lake with the demo customers, logins, raw protocol clients
and a fingerprint of everything the lake holds (to show an attack changed nothing)."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import scramp
from sqlalchemy import text

from medlake_assets.gold.run import PartitionWindow, query_report, write_gold
from medlake_assets.gold.spec import load_reports
from medlake_assets.lake import Lake
from medlake_assets.serving.pgwire import build_server
from medlake_assets.serving.pgwire.config import ServeSettings
from medlake_assets.serving.pgwire.server import SqlServer
from medlake_assets.serving.sql import connect
from medlake_assets_tests.lake_helpers import DAY, load_landed, local_settings, open_lake
from medlake_dev.generate import write_feeds

# Four facilities: Northwind owns F0001 and F0002, Riverside F0003 and F0004 (metadata/access/demo.yaml).
GENERATION = {"facilities": 4, "archives": 8, "bad_rate": 0.3, "size_scale": 0.02}  # per landing day
PASSWORD_ENVS = {
    "medlake": "MEDLAKE_SQL_PASSWORD",
    "northwind_analyst": "MEDLAKE_SQL_PASSWORD__NORTHWIND_ANALYST",
    "riverside_analyst": "MEDLAKE_SQL_PASSWORD__RIVERSIDE_ANALYST",
    "research": "MEDLAKE_SQL_PASSWORD__RESEARCH",
}
NORTHWIND = {"F0001", "F0002", "F0005"}
RIVERSIDE = {"F0003", "F0004", "F0006"}
DEID_KEY = "synthetic-test-deid-key-0123456789abcdef"


@dataclass
class Served:
    lake: Lake
    server: SqlServer
    passwords: dict[str, str]
    environ: dict[str, str]
    host: str = "127.0.0.1"
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def connect(self, user: str = "medlake", **options: Any) -> psycopg.Connection:
        settings = {"host": self.host, "port": self.port, "user": user, "password": self.passwords[user]}
        settings = {
            "dbname": "medlake",
            "autocommit": True,
            "connect_timeout": 20,
            "sslmode": "disable",
        } | settings
        return psycopg.connect(**(settings | options))

    def dsn(self, user: str = "medlake", **options: str) -> str:
        parts = {"host": self.host, "port": str(self.port), "user": user, "dbname": "medlake"} | options
        return " ".join(f"{name}={value}" for name, value in parts.items())


def make_lake(home: Path) -> Lake:
    """A lake under `home` over two landing days (bronze with its quarantine, silver, encounters, the
    ledger), loaded by the pipeline's own loads (`load_landed`, no Dagster runs: the orchestration is tested
    in `defs/`), then every gold table written by its report's query (no pages rendered). Two days give
    silver a first snapshot to travel back to."""
    lake = open_lake(local_settings(home))
    # seeds whose bad records put quarantine rows in each customer's facilities (F0001 and F0003)
    for seed, day in ((3, DAY - timedelta(days=1)), (6, DAY)):
        write_feeds(home, **GENERATION, seed=seed, day=day)
        assert load_landed(lake) > 0
    start = datetime.combine(DAY - timedelta(days=2), datetime.min.time(), UTC)
    end = datetime.combine(DAY + timedelta(days=1), datetime.min.time(), UTC)
    con = connect(lake)
    try:
        for report in load_reports(lake.settings.reports_dir):
            window = PartitionWindow(start, end, "test") if report.header.partitions is not None else None
            write_gold(lake.catalog, report, query_report(con, report, end, window), window)
    finally:
        con.close()
    return lake


def serve(lake: Lake, environ: dict[str, str], **limits: Any) -> Served:
    """A running server over `lake` with its own passwords (and limits, e.g. statement_timeout_seconds)."""
    passwords = {user: secrets.token_urlsafe(12) for user in PASSWORD_ENVS}
    env = {**environ, **{PASSWORD_ENVS[user]: password for user, password in passwords.items()}}
    serve_settings = ServeSettings(**limits) if limits else None
    server = build_server(lake, "127.0.0.1", 0, environ=env, serve=serve_settings)
    served = Served(lake, server, passwords, env)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.threads.append(thread)
    return served


def stop(served: Served) -> None:
    served.server.shutdown()
    served.server.server_close()


@contextmanager
def served_lake(lake: Lake, environ: dict[str, str], **limits: Any):
    served = serve(lake, environ, **limits)
    try:
        yield served
    finally:
        stop(served)


# --- a raw protocol client, for what no driver does (leave mid-query, lie about lengths) ---


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv(sock, 5)
    return head[:1], _recv(sock, struct.unpack("!i", head[1:])[0] - 4)


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def raw_login(served: Served, user: str = "medlake") -> socket.socket:
    """A socket past SCRAM authentication and the first ReadyForQuery."""
    sock = socket.create_connection((served.host, served.port), timeout=60)
    parameters = f"user\x00{user}\x00database\x00medlake\x00\x00".encode()
    sock.sendall(struct.pack("!ii", len(parameters) + 8, 196608) + parameters)
    kind, body = read_message(sock)
    assert kind == b"R" and struct.unpack("!i", body[:4])[0] == 10, (kind, body)
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, served.passwords[user])
    first = client.get_client_first().encode()
    sock.sendall(_message(b"p", b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first))
    kind, body = read_message(sock)
    client.set_server_first(body[4:].decode())
    sock.sendall(_message(b"p", client.get_client_final().encode()))
    kind, body = read_message(sock)
    client.set_server_final(body[4:].decode())
    while kind != b"Z":
        kind, body = read_message(sock)
    return sock


def send_query(sock: socket.socket, sql: str) -> None:
    sock.sendall(_message(b"Q", sql.encode() + b"\x00"))


# --- the lake's state ---


def lake_fingerprint(lake: Lake) -> dict[str, Any]:
    """Every warehouse file with its content hash, each table's current snapshot, and the ledger's rows:
    equal fingerprints mean nothing in the lake changed."""
    warehouse = Path(lake.settings.warehouse.removeprefix("file://"))
    files = {
        str(path.relative_to(warehouse)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(warehouse.rglob("*"))
        if path.is_file()
    }
    snapshots = {}
    for namespace in lake.catalog.list_namespaces():
        for identifier in lake.catalog.list_tables(namespace):
            table = lake.catalog.load_table(identifier)
            snapshot = table.current_snapshot()
            snapshots[".".join(identifier)] = (
                table.metadata_location,
                snapshot.snapshot_id if snapshot else None,
            )
    with lake.ledger.engine.connect() as connection:
        ledger = [tuple(row) for row in connection.execute(text("SELECT * FROM medlake_files ORDER BY id"))]
    return {"files": files, "snapshots": snapshots, "ledger": ledger}


def base_environ() -> dict[str, str]:
    return {**os.environ, "MEDLAKE_DEID_KEY": DEID_KEY}
