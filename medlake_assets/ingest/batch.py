"""Load one batch of archives into bronze: read, unpack, parse, commit once, then record in the ledger.

Order matters for exactly-once: the Iceberg commit comes first and the ledger update second. A crash in
between leaves the files `pending`; the retry sees the batch id in a snapshot summary and replaces the same
archives' rows instead of appending them again.

Bounded memory: records are written as data files of the bronze table while the batch is read
(`BronzeWriter`, a file every `WRITE_BYTES` of Arrow data; a large archive piece by piece as it is parsed,
`process_archives`), and the batch's single commit then adds all of them. A run holds about one archive's
unpacked text and one buffer of records, not the batch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import pyarrow as pa
from pyiceberg.expressions import AlwaysFalse, EqualTo, In
from pyiceberg.table import Table

from medlake_assets.ingest.bronze import (
    arrow_schema,
    batch_committed,
    bronze_table,
    commit_batch,
    quarantine_table,
)
from medlake_assets.ingest.landing import FUTURE_DAY, quarantine_original
from medlake_assets.ingest.pipeline import (
    ArchiveContext,
    ArchiveResult,
    ArchiveWork,
    reject_rows,
    with_lineage,
)
from medlake_assets.ingest.pool import process_archives
from medlake_assets.lake import Lake
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.files import StagedFiles, replace_with_files
from medlake_assets.lake.ledger import PENDING, QUARANTINED, FileResult, LedgerFile
from medlake_assets.spec import SourceSpec

MISSING_SECRET = "config.missing_secret"


@dataclass
class BatchResult:
    batch_id: str
    source: str
    archives: int = 0
    archives_quarantined: int = 0
    members: int = 0
    records: int = 0
    rejected_records: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    rules: Counter[str] = field(default_factory=Counter)
    snapshot_id: int | None = None
    archives_held: int = 0
    missing_secrets: set[str] = field(default_factory=set)
    """Secrets (environment variable names) whose absence held archives back: a configuration fault."""

    @property
    def quarantine_rate(self) -> float:
        return self.archives_quarantined / self.archives if self.archives else 0.0


def _reason_document(result: ArchiveResult) -> dict:
    return {
        "key": result.context.key,
        "batch": result.context.batch_id,
        "rule": result.rule,
        "reason": result.reason,
        "rejected_records": [
            {"member": r.member, "record": r.record, "line": r.line, "rule": r.rule, "reason": r.reason}
            for r in result.rejects
        ],
    }


def load_batch(
    lake: Lake, spec: SourceSpec, batch_id: str, files: Sequence[LedgerFile], *, replace: bool = False
) -> BatchResult:
    """Load `files` (ledger rows of one source) as `batch_id`; bad input is quarantined, never raised.

    Under the batch's lock: a second worker given the same batch (two runs of it racing, e.g. the daemon's
    and an `ingest --once`) waits, then finds every file done and loads nothing again; if the first died
    between its commit and the ledger update, it replaces the rows the first committed (it sees the batch
    id in a snapshot) rather than appending them again. A backfill (`replace`) always reloads.
    """
    with lake.ledger.batch_lock(batch_id):
        current = lake.ledger.batch_files(batch_id)
        if not replace and all(row.status != PENDING for row in current):
            return _outcome_from_ledger(lake, spec, batch_id, current)
        return _load_batch(lake, spec, batch_id, files, replace=replace)


def _outcome_from_ledger(
    lake: Lake, spec: SourceSpec, batch_id: str, files: Sequence[LedgerFile]
) -> BatchResult:
    """The outcome of a batch already done, from its ledger rows: nothing is read or committed."""
    outcome = BatchResult(batch_id=batch_id, source=spec.name, archives=len(files))
    for row in files:
        if row.status == QUARANTINED:
            outcome.archives_quarantined += 1
            outcome.rules[row.rule or ""] += 1
        else:
            outcome.members += row.members or 0
            outcome.records += row.records or 0
            outcome.rejected_records += row.rejected_records or 0
    outcome.snapshot_id = bronze_table(lake.catalog, spec).metadata.current_snapshot_id
    return outcome


def _load_batch(
    lake: Lake, spec: SourceSpec, batch_id: str, files: Sequence[LedgerFile], *, replace: bool
) -> BatchResult:
    started = time.perf_counter()
    ingested_at = datetime.now(UTC)
    password_ref = spec.landing.password
    store = lake.store
    engine = lake.settings.archive_engine

    def work() -> Iterator[ArchiveWork]:
        # Read here, in order, while the workers parse the archives already handed to them.
        for row in files:
            data = store.get(row.key)
            context = ArchiveContext(row.key, row.facility or "", row.landing_day, batch_id, ingested_at)
            password = password_ref.resolve(context.facility) if password_ref else None
            yield ArchiveWork(data, context, spec, password, engine)

    bronze = bronze_table(lake.catalog, spec)
    rejects = quarantine_table(lake.catalog, spec)
    writer = BronzeWriter(bronze)
    # Only the bytes of archives with something to quarantine are kept (the copy must be what was parsed).
    results: list[tuple[LedgerFile, ArchiveResult, int, bytes | None]] = []
    held: list[tuple[LedgerFile, str]] = []
    try:
        for row, (item, result) in zip(files, process_archives(work(), sink=writer.add), strict=True):
            if result.rule == "archive.no_password" and password_ref is not None:
                # A missing secret is a configuration fault, not bad input: hold the archive, never
                # quarantine it (it sent no record).
                held.append((row, password_ref.env_names(row.facility or "")[0]))
                continue
            data = item.data if result.quarantined or result.rejects else None
            results.append((row, result, len(item.data), data))
        archive_results = [result for _, result, _, _ in results]

        # Held archives stay out of the commit: a re-sent key keeps its earlier version's rows until it
        # loads. Replace when these archives may already be in the table: a retry after a crash, a
        # backfill, or a facility re-sending a file under the same key (a new version replaces the old
        # one's rows).
        keys = [row.key for row, *_ in results]
        replace = (
            replace or batch_committed(bronze, batch_id) or bool(lake.ledger.loaded_keys(store.uri, keys))
        )
        writer.commit(keys, batch_id, replace)
    except BaseException:
        writer.discard()
        raise
    commit_batch(
        rejects,
        reject_rows(archive_results, arrow_schema(rejects)),
        archives=keys,
        batch_id=batch_id,
        replace=replace,
        scope=EqualTo("stage", "bronze"),  # silver-stage rejects of these archives are silver's to replace
    )

    outcome = BatchResult(batch_id=batch_id, source=spec.name, archives=len(files))
    by_reason: dict[str, list[int]] = {}
    for row, secret in held:
        by_reason.setdefault(_missing_secret_reason(spec, row.facility or ""), []).append(row.id)
        outcome.archives_held += 1
        outcome.missing_secrets.add(secret)
    for reason, ids in by_reason.items():
        lake.ledger.hold(ids, MISSING_SECRET, reason)
    loaded, quarantined = [], []
    for row, result, size, data in results:
        outcome.bytes_read += size
        quarantine_key = None
        if data is not None:
            quarantine_key = quarantine_original(store, row.key, data, _reason_document(result))
        file_result = FileResult(
            file_id=row.id,
            members=result.members,
            records=result.records,
            rejected_records=len(result.rejects),
            rule=result.rule or (result.rejects[0].rule if result.rejects else None),
            reason=result.reason or _rejects_summary(result),
            quarantine_key=quarantine_key,
        )
        if result.quarantined:
            quarantined.append(file_result)
            outcome.archives_quarantined += 1
            outcome.rules[result.rule or ""] += 1
        else:
            loaded.append(file_result)
            outcome.members += result.members
            outcome.records += result.records
            outcome.rejected_records += len(result.rejects)
            outcome.rules.update(reject.rule for reject in result.rejects)
    lake.ledger.mark_loaded(loaded)
    lake.ledger.mark_quarantined(quarantined)
    bronze.refresh()
    outcome.snapshot_id = bronze.metadata.current_snapshot_id
    outcome.seconds = time.perf_counter() - started
    return outcome


WRITE_BYTES = 32 * 1024**2
"""Arrow bytes of records buffered before they are written as a data file (larger: fewer data files and a
higher peak)."""


class BronzeWriter:
    """Records of a batch with their lineage, written as staged data files of the bronze table as they come
    (a file per `WRITE_BYTES`), committed together by `commit`."""

    def __init__(self, table: Table, write_bytes: int | None = None) -> None:
        self.staged = StagedFiles(table, in_background=True)  # parsing goes on while a file is written
        self.schema = arrow_schema(table)
        self.write_bytes = write_bytes or WRITE_BYTES
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def add(self, item: ArchiveWork, records: pa.Table) -> None:
        self._buffer.append(with_lineage(records, item.context, self.schema))
        self._buffered += records.nbytes
        if self._buffered >= self.write_bytes:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.staged.write(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], 0

    def commit(self, archives: Sequence[str], batch_id: str, replace: bool) -> None:
        """Add the staged files in one commit; `replace` first deletes the rows of `archives` (a retry, a
        backfill, a re-sent key), as `commit_batch` does."""
        self.flush()
        rows_of_archives = In("_archive", list(archives)) if replace and archives else AlwaysFalse()
        replace_with_files(self.staged, rows_of_archives, {BATCH_PROPERTY: batch_id})

    def discard(self) -> None:
        self._buffer, self._buffered = [], 0
        self.staged.discard()


def _missing_secret_reason(spec: SourceSpec, facility: str) -> str:
    """The variable(s) to set, never a value."""
    names = spec.landing.password.env_names(facility) if spec.landing.password else []
    either = f"{names[0]} (or {names[1]} for every facility)" if len(names) > 1 else "".join(names)
    return (
        f"the archive is encrypted and no password is configured: set the secret {either}; "
        "it stays pending and loads by itself once the secret is set"
    )


def release_holds(lake: Lake, spec: SourceSpec, today: date, environ: Mapping[str, str] | None = None) -> int:
    """Let held files of the source be claimed again once their cause is gone: the secret of an archive
    held for a missing password is set, or the landing day of a future-dated file has come. Checked on
    every sensor tick (one indexed query); returns how many were released."""
    password_ref = spec.landing.password
    ready = [
        row.id
        for row in lake.ledger.held(spec.name)
        if (
            row.rule == MISSING_SECRET
            and (password_ref is None or password_ref.resolve(row.facility or "", environ))
        )
        or (row.rule == FUTURE_DAY and row.landing_day is not None and row.landing_day <= today)
    ]
    lake.ledger.release(ready)
    return len(ready)


def _rejects_summary(result: ArchiveResult) -> str | None:
    if not result.rejects:
        return None
    rules = Counter(reject.rule for reject in result.rejects)
    listed = ", ".join(f"{rule} x{count}" for rule, count in sorted(rules.items()))
    return f"{len(result.rejects)} record(s) quarantined ({listed}); the rest of the archive loaded"
