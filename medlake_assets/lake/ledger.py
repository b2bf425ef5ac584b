"""The ledger `meta.files`: one row per landed object, the transactional record behind exactly-once loads.

It lives in the Iceberg SQL catalog's database (SQLite by default, PostgreSQL in production), in table
`medlake_files`, unique on (store, key, etag). Sensors register objects (insert if absent) and claim the
pending ones into deterministic batches; runs mark each file loaded or quarantined (design.md section 4).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    not_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from medlake_assets.errors import MedlakeError

PENDING = "pending"
LOADED = "loaded"
QUARANTINED = "quarantined"
STATUSES = (PENDING, LOADED, QUARANTINED)

TABLE_NAME = "medlake_files"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE = "medlake_write"  # execution option: this transaction writes
_MAX_ROWS_PER_INSERT = 500  # 12 parameters a row: well under SQLite's and PostgreSQL's parameter limits
_MAX_IDS_PER_STATEMENT = 10_000
_PG_LOCK_CLASS = 0x6D6C  # "ml": namespaces the advisory locks taken below
_PG_CREATE_LOCK = 0
_PG_BATCH_LOCK_CLASS = 0x6D62  # "mb": one advisory lock per batch id (`batch_lock`)
_PG_LAKE_LOCK_CLASS = 0x6D6B  # "mk": lake-wide named locks (`lake_lock`)


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps text without an offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()
files = Table(
    TABLE_NAME,
    metadata,
    # INTEGER PRIMARY KEY is SQLite's autoincrementing rowid; BIGINT would not be.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("store", Text, nullable=False),
    # Byte-order collation on PostgreSQL (SQLite's default) makes a key-prefix range scan exact and indexed.
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("etag", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("source", Text),
    Column("facility", Text),
    Column("landing_day", Date),
    Column("batch_id", Text, index=True),
    Column("status", Text, nullable=False),
    Column("members", Integer),
    Column("records", BigInteger),
    Column("rejected_records", BigInteger),
    Column("rule", Text),
    Column("reason", Text),
    Column("quarantine_key", Text),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("loaded_at", UtcDateTime),
    UniqueConstraint("store", "key", "etag", name=f"uq_{TABLE_NAME}_object"),
    CheckConstraint(f"status IN {STATUSES!r}", name=f"ck_{TABLE_NAME}_status"),
    Index(f"ix_{TABLE_NAME}_source_status_batch", "source", "status", "batch_id"),
    Index(f"ix_{TABLE_NAME}_source_day", "source", "landing_day"),
)
_RESULT_COLUMNS = ("members", "records", "rejected_records", "rule", "reason", "quarantine_key")
# Rows rejected (error) or warned per rule and facility, per batch and stage: `medlake quality`, meta.quality.
quality = Table(
    "medlake_quality",
    metadata,
    Column("source", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("facility", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Index("ix_medlake_quality_source_day", "source", "landing_day"),
)
# Which bronze batches a downstream table (e.g. silver.bed_census) has taken in: incremental processing.
processed = Table(
    "medlake_processed",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("processed_at", UtcDateTime, nullable=False),
    UniqueConstraint("consumer", "batch_id", name="uq_medlake_processed"),
    Index("ix_medlake_processed_consumer_day", "consumer", "landing_day"),
)
# Which content (`files.etag`) a listed version stamp of an object had, where the two differ (a local file's
# size-mtime-inode): a later listing with the same stamp needs no read to know what it holds.
stamps = Table(
    "medlake_stamps",
    metadata,
    Column("store", Text, nullable=False),
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("stamp", Text, nullable=False),
    Column("etag", Text, nullable=False),
    UniqueConstraint("store", "key", "stamp", name="uq_medlake_stamps"),
)

# Facilities' rows of a batch that silver's gate held back (`silver/quality/held.py`), and what became of
# them.
held = Table(
    "medlake_held",
    metadata,
    Column("source", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("facility", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("error_rate", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("rules", Text, nullable=False),
    Column("metadata_version", Text, nullable=False),
    Column("held_at", UtcDateTime, nullable=False),
    Column("evaluated_at", UtcDateTime, nullable=False),
    Column("released_by", Text),
    Column("released_at", UtcDateTime),
    Column("published_at", UtcDateTime),
    UniqueConstraint("source", "batch_id", "facility", name="uq_medlake_held"),
    Index("ix_medlake_held_source_status", "source", "status"),
)


@dataclass(frozen=True)
class NewObject:
    """A listed object to register; `source` and `landing_day` come from the key pattern that routed it."""

    store: str
    key: str
    etag: str
    size: int
    source: str | None
    facility: str | None
    landing_day: date | None


@dataclass(frozen=True)
class FileRow:
    """One ledger row."""

    id: int
    store: str
    key: str
    etag: str
    size: int
    source: str | None
    facility: str | None
    landing_day: date | None
    batch_id: str | None
    status: str
    members: int | None
    records: int | None
    rejected_records: int | None
    rule: str | None
    reason: str | None
    quarantine_key: str | None
    first_seen_at: datetime
    updated_at: datetime
    loaded_at: datetime | None


@dataclass(frozen=True)
class Batch:
    """Files of one source and landing day that one run loads together."""

    batch_id: str
    source: str
    landing_day: date
    file_ids: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class FileResult:
    """The outcome of loading one file, recorded by `mark_loaded` / `mark_quarantined`."""

    file_id: int
    members: int | None = None
    records: int | None = None
    rejected_records: int | None = None
    rule: str | None = None
    reason: str | None = None
    quarantine_key: str | None = None


class LedgerConflict(MedlakeError, RuntimeError):
    """Another writer took files this claim had selected; nothing was claimed, the next claim retries."""


T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now() -> datetime:
    return datetime.now(UTC)


def _after_prefix(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None when there is none)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates cannot be encoded; the next character is U+E000
        following = 0xE000
    return stripped[:-1] + chr(following)


def batch_id_for(source: str, landing_day: date, file_ids: Sequence[int]) -> str:
    """The deterministic id of a claimed batch: source, landing day and its first and last file ids."""
    return f"{source}-{landing_day:%Y%m%d}-{file_ids[0]:09d}-{file_ids[-1]:09d}"


def cut_batches(source: str, rows: Sequence[Any], *, max_archives: int, max_bytes: int) -> list[Batch]:
    """Cut rows (`id`, `landing_day`, `size`; sorted by day, then id) into batches per landing day.

    A batch holds at most `max_archives` files and `max_bytes` bytes, except that a single file larger than
    `max_bytes` is a batch of its own.
    """
    batches = []
    for day, day_rows in itertools.groupby(rows, key=lambda row: row.landing_day):
        ids: list[int] = []
        size = 0
        for row in day_rows:
            if ids and (len(ids) >= max_archives or size + row.size > max_bytes):
                batches.append(Batch(batch_id_for(source, day, ids), source, day, tuple(ids), size))
                ids, size = [], 0
            ids.append(row.id)
            size += row.size
        batches.append(Batch(batch_id_for(source, day, ids), source, day, tuple(ids), size))
    return batches


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


class Ledger:
    """The `medlake_files` table on a SQLite or PostgreSQL database, created if absent."""

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

    def _insert_absent(self, rows: list[dict[str, Any]]) -> int:
        if not rows:  # a quiet sensor tick should not take the write lock
            return 0
        # One key order for all writers: concurrent inserts on PostgreSQL wait for each other, never deadlock.
        rows = sorted(rows, key=lambda row: (row["store"], row["key"], row["etag"]))
        new = 0
        with self._writer.begin() as connection:
            for chunk in _chunks(rows, _MAX_ROWS_PER_INSERT):
                statement = (
                    self._insert(files)
                    .values(list(chunk))
                    .on_conflict_do_nothing(index_elements=["store", "key", "etag"])
                )
                new += connection.execute(statement).rowcount
        return new

    def register(self, objects: Sequence[NewObject], *, hold: tuple[str, str] | None = None) -> int:
        """Insert the objects not yet known as pending, in one transaction; returns how many were new.

        With `hold` (rule, reason) they are registered held back (see `hold`) until `release`.
        """
        for obj in objects:
            if obj.source is None or obj.landing_day is None:
                raise ValueError(
                    f"object {obj.key!r} has no source or landing day; register it with quarantine_unrouted"
                )
        now = _now()
        rule, reason = hold or (None, None)
        return self._insert_absent(
            [
                _object_values(obj)
                | {"status": PENDING, "rule": rule, "reason": reason, "first_seen_at": now, "updated_at": now}
                for obj in objects
            ]
        )

    def quarantine_unrouted(
        self, objects: Sequence[NewObject], rule: str, reason: str, quarantine_key_for: Callable[[str], str]
    ) -> int:
        """Insert objects no single source claims as quarantined, if absent; returns how many were new."""
        now = _now()
        return self._insert_absent(
            [
                _object_values(obj)
                | {
                    "status": QUARANTINED,
                    "rule": rule,
                    "reason": reason,
                    "quarantine_key": quarantine_key_for(obj.key),
                    "first_seen_at": now,
                    "updated_at": now,
                }
                for obj in objects
            ]
        )

    def known_keys(self, store: str, prefix: str) -> set[tuple[str, str]]:
        """(key, etag) of every object of `store` registered under the key prefix (a string prefix)."""
        query = select(files.c.key, files.c.etag).where(files.c.store == store, files.c.key >= prefix)
        upper = _after_prefix(prefix)
        if upper is not None:
            query = query.where(files.c.key < upper)
        with self._engine.connect() as connection:
            return {(key, etag) for key, etag in connection.execute(query)}

    def stamped(self, store: str, prefix: str) -> dict[tuple[str, str], str]:
        """{(key, stamp): etag} recorded for objects of `store` under the key prefix (`record_stamps`)."""
        query = select(stamps.c.key, stamps.c.stamp, stamps.c.etag).where(
            stamps.c.store == store, stamps.c.key >= prefix
        )
        if (upper := _after_prefix(prefix)) is not None:
            query = query.where(stamps.c.key < upper)
        with self._engine.connect() as connection:
            return {(key, stamp): etag for key, stamp, etag in connection.execute(query)}

    def record_stamps(self, store: str, rows: Sequence[tuple[str, str, str]]) -> None:
        """Remember (key, stamp, etag) of listed objects, if absent (a repeat changes nothing)."""
        values = [{"store": store, "key": key, "stamp": stamp, "etag": etag} for key, stamp, etag in rows]
        if not values:
            return
        with self._writer.begin() as connection:
            for chunk in _chunks(sorted(values, key=lambda row: (row["key"], row["stamp"])), 1000):
                statement = self._insert(stamps).values(list(chunk))
                connection.execute(statement.on_conflict_do_nothing(index_elements=["store", "key", "stamp"]))

    def claim_batches(self, source: str, *, max_archives: int, max_bytes: int) -> list[Batch]:
        """Assign the source's unclaimed pending files to new batches (see `cut_batches`), in one transaction.

        Raises LedgerConflict, claiming nothing, if another writer took any of the selected files meanwhile.
        """
        if max_archives < 1 or max_bytes < 1:
            raise ValueError(
                f"max_archives and max_bytes must be positive, got {max_archives} and {max_bytes}"
            )
        with self._writer.begin() as connection:
            if self._postgres:  # claimers of one source queue here (SQLite's BEGIN IMMEDIATE does the same)
                connection.execute(select(func.pg_advisory_xact_lock(_PG_LOCK_CLASS, func.hashtext(source))))
            # A pending file with a rule is held back (`hold`) until `release` clears it.
            rows = connection.execute(
                select(files.c.id, files.c.landing_day, files.c.size)
                .where(
                    files.c.source == source,
                    files.c.status == PENDING,
                    files.c.batch_id.is_(None),
                    files.c.rule.is_(None),
                )
                .order_by(files.c.landing_day, files.c.id)
            ).all()
            batches = cut_batches(source, rows, max_archives=max_archives, max_bytes=max_bytes)
            now = _now()
            for batch in batches:
                claimed = sum(
                    connection.execute(
                        update(files)
                        .where(files.c.id.in_(ids), files.c.status == PENDING, files.c.batch_id.is_(None))
                        .values(batch_id=batch.batch_id, updated_at=now)
                    ).rowcount
                    for ids in _chunks(batch.file_ids, _MAX_IDS_PER_STATEMENT)
                )
                if claimed != len(batch.file_ids):
                    raise LedgerConflict(
                        f"batch {batch.batch_id}: {len(batch.file_ids) - claimed} of its files were taken by "
                        "another writer; nothing was claimed"
                    )
        return batches

    def unfinished_batches(self, source: str) -> list[Batch]:
        """Batches of the source with a file still pending (claimed but not loaded), with all their files."""
        open_batches = (
            select(files.c.batch_id)
            .where(files.c.source == source, files.c.status == PENDING, files.c.batch_id.is_not(None))
            .distinct()
        )
        query = (
            select(files.c.batch_id, files.c.id, files.c.landing_day, files.c.size)
            .where(files.c.batch_id.in_(open_batches))
            .order_by(files.c.batch_id, files.c.id)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        batches = []
        for batch_id, group in itertools.groupby(rows, key=lambda row: row.batch_id):
            members = list(group)
            batches.append(
                Batch(
                    batch_id=batch_id,
                    source=source,
                    landing_day=members[0].landing_day,
                    file_ids=tuple(row.id for row in members),
                    size=sum(row.size for row in members),
                )
            )
        return sorted(batches, key=lambda batch: batch.file_ids[0])

    def _rows(self, *conditions: Any) -> list[FileRow]:
        with self._engine.connect() as connection:
            result = connection.execute(select(files).where(*conditions).order_by(files.c.id))
            return [FileRow(**row._mapping) for row in result]

    def batch_files(self, batch_id: str) -> list[FileRow]:
        """The files of a batch, in id order."""
        return self._rows(files.c.batch_id == batch_id)

    def day_files(self, source: str, landing_day: date) -> list[FileRow]:
        """Every file of a source and landing day, whatever its status, in id order (for a backfill)."""
        return self._rows(files.c.source == source, files.c.landing_day == landing_day)

    def loaded_keys(self, store: str, keys: Sequence[str]) -> set[str]:
        """Keys with any version already loaded: a batch holding them must replace, not append, their rows."""
        found: set[str] = set()
        with self._engine.connect() as connection:
            for chunk in _chunks(list(keys), 500):
                query = select(files.c.key).where(
                    files.c.store == store, files.c.key.in_(chunk), files.c.status == LOADED
                )
                found.update(connection.scalars(query))
        return found

    def loaded_batches(self, source: str, landing_day: date) -> set[str]:
        """Batch ids with files loaded into bronze for a source and landing day."""
        query = select(files.c.batch_id).distinct()
        query = query.where(
            files.c.source == source, files.c.landing_day == landing_day, files.c.status == LOADED
        )
        with self._engine.connect() as connection:
            return set(connection.scalars(query))

    def processed_batches(self, consumer: str, landing_day: date) -> set[str]:
        """Batch ids a downstream table has already taken in for a landing day."""
        query = select(processed.c.batch_id).where(
            processed.c.consumer == consumer, processed.c.landing_day == landing_day
        )
        with self._engine.connect() as connection:
            return set(connection.scalars(query))

    def mark_processed(self, consumer: str, source: str, landing_day: date, batch_ids: Sequence[str]) -> None:
        """Record batches as taken in by `consumer` (insert if absent: a repeat changes nothing)."""
        rows = [
            {
                "consumer": consumer,
                "batch_id": batch,
                "source": source,
                "landing_day": landing_day,
                "processed_at": _now(),
            }
            for batch in sorted(batch_ids)
        ]
        if not rows:
            return
        with self._writer.begin() as connection:
            for chunk in _chunks(rows, _MAX_ROWS_PER_INSERT):
                statement = self._insert(processed).values(list(chunk))
                connection.execute(statement.on_conflict_do_nothing(index_elements=["consumer", "batch_id"]))

    def record_quality(
        self,
        source: str,
        stage: str,
        landing_day: date,
        batch_ids: Sequence[str],
        counts,
        facilities: Sequence[str] | None = None,
    ) -> None:
        """Replace the counts of these batches and stage (only these facilities' counts, if given) with
        `counts` rows (batch_id, facility, rule, severity, rows): a re-run leaves one set of counts."""
        now = _now()
        rows = [
            {"source": source, "stage": stage, "landing_day": landing_day, "recorded_at": now, **row}
            for row in counts
        ]
        scope = [] if facilities is None else [quality.c.facility.in_(list(facilities))]
        with self._writer.begin() as connection:
            for chunk in _chunks(list(batch_ids), 500):
                connection.execute(
                    quality.delete().where(
                        quality.c.source == source,
                        quality.c.stage == stage,
                        quality.c.batch_id.in_(chunk),
                        *scope,
                    )
                )
            for chunk in _chunks(rows, _MAX_ROWS_PER_INSERT):
                connection.execute(quality.insert().values(list(chunk)))

    def last_loaded_at(self, source: str) -> datetime | None:
        """When a file of the source was last loaded (the freshness check's clock)."""
        query = select(func.max(files.c.loaded_at)).where(files.c.source == source)
        with self._engine.connect() as connection:
            value = connection.scalar(query)
        if isinstance(value, str):  # SQLite returns aggregates of the column as text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def pending_days(self, consumer: str, source: str) -> list[date]:
        """Landing days with bronze batches the consumer has not taken in yet."""
        return sorted(self.pending_batches(consumer, source))

    def pending_batches(
        self, consumer: str, source: str, loaded_before: datetime | None = None
    ) -> dict[date, set[str]]:
        """Per landing day, the loaded bronze batches the consumer has not taken in yet (only those
        loaded before `loaded_before`, if given)."""
        done = select(processed.c.batch_id).where(processed.c.consumer == consumer)
        query = (
            select(files.c.landing_day, files.c.batch_id)
            .distinct()
            .where(files.c.source == source, files.c.status == LOADED, files.c.batch_id.not_in(done))
        )
        if loaded_before is not None:
            query = query.where(files.c.loaded_at < loaded_before)
        pending: dict[date, set[str]] = {}
        with self._engine.connect() as connection:
            for day, batch_id in connection.execute(query):
                pending.setdefault(day, set()).add(batch_id)
        return pending

    def file(self, file_id: int) -> FileRow:
        """One row by id; LookupError if there is none."""
        rows = self._rows(files.c.id == file_id)
        if not rows:
            raise LookupError(f"no file with id {file_id} in the ledger")
        return rows[0]

    def mark_loaded(self, results: Sequence[FileResult]) -> None:
        """Record files as loaded, in one transaction. A repeat with the same results changes nothing."""
        self._mark(results, LOADED)

    def mark_quarantined(self, results: Sequence[FileResult]) -> None:
        """Record files as quarantined (`loaded_at` cleared: none of their rows are in the table), in one
        transaction. A repeat with the same results changes nothing."""
        self._mark(results, QUARANTINED)

    def _mark(self, results: Sequence[FileResult], status: str) -> None:
        if not results:
            return
        now = _now()
        given = {column: bindparam(f"given_{column}") for column in _RESULT_COLUMNS}
        # Rows already in exactly this state are left alone, timestamps included: that is the idempotence.
        same_state = and_(
            files.c.status == status,
            *(files.c[column].is_not_distinct_from(given[column]) for column in given),
        )
        statement = (
            update(files)
            .where(files.c.id == bindparam("given_id"), not_(same_state))
            .values(status=status, updated_at=now, loaded_at=now if status == LOADED else None, **given)
        )
        parameters = [
            {"given_id": result.file_id}
            | {f"given_{column}": getattr(result, column) for column in _RESULT_COLUMNS}
            for result in results
        ]
        with self._writer.begin() as connection:
            self._require_ids(connection, {result.file_id for result in results})
            connection.execute(statement, parameters)

    def hold(self, file_ids: Sequence[int], rule: str, reason: str) -> None:
        """Keep files pending but out of every batch, with the rule and reason that hold them back (e.g. a
        missing secret), in one transaction; `claim_batches` skips them until `release`."""
        self._set(file_ids, batch_id=None, rule=rule, reason=reason)

    def release(self, file_ids: Sequence[int]) -> None:
        """Let held files be claimed again (the cause of the hold is gone), in one transaction."""
        self._set(file_ids, rule=None, reason=None)

    def held(self, source: str | None = None, rule: str | None = None) -> list[FileRow]:
        """Files held back (pending with a rule), for one source and rule or all, in id order."""
        conditions = [files.c.status == PENDING, files.c.batch_id.is_(None), files.c.rule.is_not(None)]
        if source is not None:
            conditions.append(files.c.source == source)
        if rule is not None:
            conditions.append(files.c.rule == rule)
        return self._rows(*conditions)

    def _set(self, file_ids: Sequence[int], **values: Any) -> None:
        ids = sorted(set(file_ids))
        if not ids:
            return
        with self._writer.begin() as connection:
            self._require_ids(connection, set(ids))
            for chunk in _chunks(ids, _MAX_IDS_PER_STATEMENT):
                connection.execute(
                    update(files)
                    .where(files.c.id.in_(chunk), files.c.status == PENDING)
                    .values(updated_at=_now(), **values)
                )

    def assign_batch(self, file_ids: Sequence[int], batch_id: str) -> None:
        """Make `batch_id` the owner of these files (a backfill re-owning a day), in one transaction."""
        ids = sorted(set(file_ids))
        if not ids:
            return
        now = _now()
        with self._writer.begin() as connection:
            self._require_ids(connection, set(ids))
            for chunk in _chunks(ids, _MAX_IDS_PER_STATEMENT):
                connection.execute(
                    update(files)
                    .where(files.c.id.in_(chunk), files.c.batch_id.is_distinct_from(batch_id))
                    .values(batch_id=batch_id, updated_at=now)
                )

    @staticmethod
    def _require_ids(connection: Any, ids: set[int]) -> None:
        found: set[int] = set()
        for chunk in _chunks(sorted(ids), _MAX_IDS_PER_STATEMENT):
            found.update(connection.scalars(select(files.c.id).where(files.c.id.in_(chunk))))
        if missing := ids - found:
            raise LookupError(f"no files with ids {sorted(missing)[:10]} in the ledger; nothing was changed")

    def counts(self, source: str | None = None) -> dict[str, int]:
        """Number of files per status (every status present, zero included), for one source or all."""
        query = select(files.c.status, func.count()).group_by(files.c.status)
        if source is not None:
            query = query.where(files.c.source == source)
        counts = dict.fromkeys(STATUSES, 0)
        with self._engine.connect() as connection:
            counts.update({status: count for status, count in connection.execute(query)})
        return counts


def _object_values(obj: NewObject) -> dict[str, Any]:
    return {
        "store": obj.store,
        "key": obj.key,
        "etag": obj.etag,
        "size": obj.size,
        "source": obj.source,
        "facility": obj.facility,
        "landing_day": obj.landing_day,
    }
