"""Landed files and their batches (`meta.files`): registered as they land, claimed into deterministic
batches, marked loaded or quarantined by the runs, held back and released (design.md section 4)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, not_, select, update

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.ledger.base import (
    _MAX_IDS_PER_STATEMENT,
    _MAX_ROWS_PER_INSERT,
    _PG_LOCK_CLASS,
    LedgerBase,
    _chunks,
    _now,
)
from medlake_assets.lake.ledger.tables import LOADED, PENDING, QUARANTINED, STATUSES, files, stamps

_RESULT_COLUMNS = ("members", "records", "rejected_records", "rule", "reason", "quarantine_key")


@dataclass(frozen=True)
class LandedFile:
    """A landed object routed to its source: what `register` records. `source`, `facility` and
    `landing_day` come from the key pattern that routed it (None for an object no source claims)."""

    store: str
    key: str
    etag: str
    size: int
    source: str | None
    facility: str | None
    landing_day: date | None


@dataclass(frozen=True)
class LedgerFile(LandedFile):
    """A landed file as the ledger holds it (one row of `meta.files`): its id, batch, status and outcome."""

    id: int
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


class FilesLedger(LedgerBase):
    """The `medlake_files` table: one row per landed object, the record behind exactly-once loads."""

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

    def register(self, objects: Sequence[LandedFile], *, hold: tuple[str, str] | None = None) -> int:
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
        self, objects: Sequence[LandedFile], rule: str, reason: str, quarantine_key_for: Callable[[str], str]
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

    def _rows(self, *conditions: Any) -> list[LedgerFile]:
        with self._engine.connect() as connection:
            result = connection.execute(select(files).where(*conditions).order_by(files.c.id))
            return [LedgerFile(**row._mapping) for row in result]

    def batch_files(self, batch_id: str) -> list[LedgerFile]:
        """The files of a batch, in id order."""
        return self._rows(files.c.batch_id == batch_id)

    def day_files(self, source: str, landing_day: date) -> list[LedgerFile]:
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

    def last_loaded_at(self, source: str) -> datetime | None:
        """When a file of the source was last loaded (the freshness check's clock)."""
        query = select(func.max(files.c.loaded_at)).where(files.c.source == source)
        with self._engine.connect() as connection:
            value = connection.scalar(query)
        if isinstance(value, str):  # SQLite returns aggregates of the column as text
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def file(self, file_id: int) -> LedgerFile:
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

    def held(self, source: str | None = None, rule: str | None = None) -> list[LedgerFile]:
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


def _object_values(obj: LandedFile) -> dict[str, Any]:
    return {field.name: getattr(obj, field.name) for field in fields(LandedFile)}
