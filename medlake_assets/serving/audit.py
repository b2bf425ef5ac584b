"""The SQL audit log: who ran what kind of statement on which relations, when, how many rows, and how
it ended. Never the query text nor any value (a literal in a WHERE clause can be a patient's id).

It is a table of the ledger database (`medlake_sql_audit`, next to `medlake_files`), written by the
serve-sql process through the catalog's own connection (never through a client's DuckDB, which only
has a read-only role), and shown to operators as `meta.sql_audit`.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, Table, Text, create_engine, insert

TABLE_NAME = "medlake_sql_audit"
log = logging.getLogger(__name__)

_metadata = MetaData()
audit_table = Table(
    TABLE_NAME,
    _metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("login", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("client_address", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", Integer, nullable=False),
    Column("statement", Text, nullable=False),
    Column("relations", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("sqlstate", Text),
    Column("as_of", Text),
)


@dataclass(frozen=True)
class AuditEntry:
    login: str
    role: str
    client_address: str
    started_at: datetime
    duration_ms: int
    statement: str
    """The kind only: select, explain, show, set, transaction, refused, ..."""
    relations: tuple[str, ...]
    rows: int
    outcome: str
    """ok, refused, error, timeout, cancelled, client_gone."""
    sqlstate: str | None = None
    as_of: str | None = None


class AuditLog:
    """Writes entries in a background thread, so a slow ledger never holds up a query's answer."""

    def __init__(self, url: str):
        self.engine = create_engine(url, pool_pre_ping=True)
        _metadata.create_all(self.engine, tables=[audit_table], checkfirst=True)
        self._queue: queue.Queue[AuditEntry | None] = queue.Queue(maxsize=10_000)
        self._writer = threading.Thread(target=self._write, name="serve-sql-audit", daemon=True)
        self._writer.start()

    def record(self, entry: AuditEntry) -> None:
        self._queue.put(entry)

    def _write(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                self._queue.task_done()
                return
            batch = [entry]
            while not self._queue.empty() and len(batch) < 500:
                more = self._queue.get()
                if more is None:
                    self._queue.put(None)
                    self._queue.task_done()
                    break
                batch.append(more)
            try:
                with self.engine.begin() as connection:
                    connection.execute(insert(audit_table), [_row(item) for item in batch])
            except Exception as error:  # never the entry: only that writing failed, and why in kind
                log.error(
                    "serve-sql audit: could not write %d entries (%s)", len(batch), type(error).__name__
                )
            finally:
                for _ in batch:
                    self._queue.task_done()

    def flush(self) -> None:
        """Wait until every recorded entry is written."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=30)
        self.engine.dispose()


def _row(entry: AuditEntry) -> dict[str, object]:
    return {
        "login": entry.login,
        "role": entry.role,
        "client_address": entry.client_address,
        "started_at": entry.started_at,
        "duration_ms": entry.duration_ms,
        "statement": entry.statement,
        "relations": ",".join(entry.relations),
        "rows": entry.rows,
        "outcome": entry.outcome,
        "sqlstate": entry.sqlstate,
        "as_of": entry.as_of,
    }
