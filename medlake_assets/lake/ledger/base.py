"""The ledger's database connection: engines (a writing transaction on SQLite takes the write lock up
front), the tables created if absent, and locks that die with their holder."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from medlake_assets.lake.ledger.tables import TABLE_NAME, metadata

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "medlake_write"  # execution option: this transaction writes
_MAX_ROWS_PER_INSERT = 500  # 12 parameters a row: well under SQLite's and PostgreSQL's parameter limits
_MAX_IDS_PER_STATEMENT = 10_000
_PG_LOCK_CLASS = 0x6D6C  # "ml": namespaces the advisory locks taken below
_PG_CREATE_LOCK = 0
_PG_BATCH_LOCK_CLASS = 0x6D62  # "mb": one advisory lock per batch id (`batch_lock`)
_PG_LAKE_LOCK_CLASS = 0x6D6B  # "mk": lake-wide named locks (`lake_lock`)
T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now() -> datetime:
    return datetime.now(UTC)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below); pysqlite's own handling would start transactions late.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # wait for the other writer
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # A writing transaction takes the write lock up front: one that read first and then tried to write
        # would fail at once ("database is locked") if another writer had committed in between.
        immediate = connection.get_execution_options().get(_WRITE)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class LedgerBase:
    """The ledger's database, its tables created if absent; the parts of the ledger share it."""

    def __init__(self, url: str):
        backend = make_url(url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"the ledger needs a SQLite or PostgreSQL database, not {backend!r}")
        self._url = url
        self._engine = create_engine(url, pool_pre_ping=True)
        self._postgres = backend == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert
        if not self._postgres:
            _configure_sqlite(self._engine)
        self._writer = self._engine.execution_options(**{_WRITE: True})
        with self._writer.begin() as connection:
            if self._postgres:  # processes starting together must not race to create the table
                connection.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_CLASS, _PG_CREATE_LOCK)))
            metadata.create_all(connection)

    @property
    def url(self) -> str:
        return self._url

    @property
    def table_name(self) -> str:
        return TABLE_NAME

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def writer(self) -> Engine:
        """The engine for transactions that write (on SQLite they take the write lock up front)."""
        return self._writer

    def close(self) -> None:
        """Close the pooled connections."""
        self._engine.dispose()

    def batch_lock(self, batch_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold `batch_id` for this process while it loads the batch; another process loading the same batch
        (two workers given one batch) waits here, then finds the first one's work done instead of appending
        its rows a second time."""
        return self._lock(_PG_BATCH_LOCK_CLASS, batch_id, "batch-locks")

    def lake_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Hold the lake-wide lock `name` (e.g. one `medlake ingest --once` at a time on a lake); another
        process taking it waits until this one is done."""
        return self._lock(_PG_LAKE_LOCK_CLASS, name, "lake-locks")

    @contextlib.contextmanager
    def _lock(self, lock_class: int, name: str, suffix: str) -> Iterator[None]:
        """An exclusive lock on `name` that dies with its holder, so a killed process never leaves it held:
        on PostgreSQL a session advisory lock on a connection of its own, on SQLite an fcntl record lock on
        one byte (chosen by the name's hash) of the file `<database>.<suffix>` beside the database (one
        file per kind of lock: closing any descriptor of a file drops all of a process's locks on it).
        """
        if self._postgres:
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                connection.execute(select(func.pg_advisory_lock(lock_class, key)))
                yield
            finally:
                # If the server went away the lock went with the session; the unlock may fail then.
                with contextlib.suppress(Exception):
                    connection.execute(select(func.pg_advisory_unlock(lock_class, key)))
                connection.close()
            return
        database = make_url(self._url).database
        if not database or database == ":memory:":  # private to this process: nobody to wait for
            yield
            return
        offset = int.from_bytes(hashlib.sha256(name.encode()).digest()[:5], "big")
        descriptor = os.open(f"{database}.{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(descriptor, fcntl.LOCK_EX, 1, offset)
            yield
        finally:
            os.close(descriptor)  # releases the lock
