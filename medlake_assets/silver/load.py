"""Bring one silver table up to date for a landing day: type, audit, quarantine, then publish.

Incremental: only the bronze batches of the day that this table has not taken in yet (the ledger's
`medlake_processed`). Audit before publish: the rows are typed and checked first and the failing rows go
to `quarantine.<source>` with their rule and reason. Then the gate decides per facility and batch (a
*slice*, `quality/gate.py: facility_gate`): a slice over its facility's threshold is held back (its
passing rows stay in bronze, the decision goes to `meta.held`, `quality/held.py`); the passing rows of
every other slice are merged in one commit. The batches count as taken in either way: held slices are
taken up again, by themselves, when an operator releases them or when the metadata changes.

Bounded memory: the rows are cut into chunks of about `CHUNK_ROWS` on local disk (`silver/chunks.py`:
never splitting a key or a unique rule's group). Each chunk is typed and checked alone; its rejects and
passing rows go to disk (rejects as data files of the quarantine table, committed once). A slice's counts
are sums over chunks, so the gate takes the same decisions as on the whole day at once. Then the passing
rows of published slices are merged chunk by chunk (`silver/merge.py: merge_chunks`) in one commit.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import reduce
from pathlib import Path

import polars as pl
import pyarrow as pa
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysFalse, And, BooleanExpression, EqualTo, In, Or
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from medlake_assets.ingest.bronze import bronze_table, quarantine_table
from medlake_assets.lake import Lake
from medlake_assets.lake.columns import LINEAGE_COLUMNS, MERGE_COLUMNS
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.files import StagedFiles, replace_with_files, write_scratch
from medlake_assets.silver.chunks import Chunks, spill_chunks
from medlake_assets.silver.merge import Chunk, merge_chunks
from medlake_assets.silver.quality.gate import evaluate, facility_gate, metadata_version
from medlake_assets.silver.quality.held import (
    RELEASED,
    HeldSlice,
    SliceOutcome,
    held_slices,
    record,
    supersede,
    to_evaluate,
)
from medlake_assets.silver.quality.schemas import build_schema
from medlake_assets.silver.tables import ensure_table
from medlake_assets.silver.typed import apply_types, typed_schema
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs

CHUNK_ROWS = 200_000
"""Bronze rows a silver run types, checks and merges at a time (about: a key is never split)."""
SLICE = ["_batch", "_facility"]
SILVER_BATCHES = "medlake.silver_batches"
"""Snapshot property of silver's commits (its table and its quarantine's): the batches they took in."""


@dataclass
class SilverResult:
    table: str
    batches: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_written: int = 0
    rejected: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    rejected_by_facility: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    threshold: float = 0.0
    held: Counter[str] = field(default_factory=Counter)
    """Passing rows held back in this run, per facility."""
    published_facilities: int = 0
    reevaluated: int = 0
    """Held or released slices of earlier runs taken up again."""
    released: int = 0
    """Slices published in this run because an operator released them."""
    seconds: float = 0.0
    snapshot_id: int | None = None

    @property
    def error_rate(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0

    @property
    def published(self) -> bool:
        """False only when the run had rows and every facility's were held back: nothing to publish."""
        return not self.held or self.published_facilities > 0


def consumer(name: str) -> str:
    return f"silver.{name}"


LINEAGE_SCHEMA: dict[str, pl.DataType] = {
    "_archive": pl.String(),
    "_member": pl.String(),
    "_record": pl.Int64(),
    "_facility": pl.String(),
    "_landing_day": pl.Date(),
    "_ingested_at": pl.Datetime("us", "UTC"),
    "_batch": pl.String(),
}


def silver_schema(spec: SourceSpec) -> pa.Schema:
    """Typed columns (with companions), lineage, then the write mode's columns, as Arrow."""
    typed = pl.DataFrame(schema={**typed_schema(spec), **LINEAGE_SCHEMA}).to_arrow().schema
    extra = [pa.field(name, schema_to_pyarrow(kind)) for name, kind in MERGE_COLUMNS[spec.write.mode]]
    return pa.schema([*typed, *extra])


def _rejected_rows(frame: pl.DataFrame, rows: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """Quarantine rows (stage silver) for failing rows: lineage, rule, reason, and in `raw` the row as
    received from bronze (JSON), since a value that failed its cast is null in the typed frame."""
    picked = frame.with_row_index("_row").join(rows, on="_row", how="inner")
    return picked.select(
        *LINEAGE_COLUMNS,
        pl.lit(None, dtype=pl.Int64).alias("_line"),
        pl.lit("silver").alias("stage"),
        "rule",
        "reason",
        pl.struct(columns).struct.json_encode().alias("raw"),
    )


def _quality_counts(quarantine: pl.DataFrame, gate) -> pl.DataFrame:
    """Rows per batch, facility, rule and severity: every rejected row (casts included) and every warning."""
    errors = quarantine.group_by("_batch", "_facility", "rule").agg(pl.len().alias("rows"))
    errors = errors.with_columns(pl.lit("error").alias("severity"))
    frames = [errors.select("_batch", "_facility", "rule", "severity", "rows")]
    if gate.by_batch is not None:
        warned = gate.by_batch.filter(pl.col("severity") == "warn")
        frames.append(
            warned.select("_batch", "_facility", "rule", "severity", pl.col("rows").cast(pl.UInt32))
        )
    return pl.concat([frame.cast({"rows": pl.Int64}) for frame in frames])


@dataclass
class _Audit:
    """What the chunks' audits add up to: per-slice counts, quality counts, and where passing rows are."""

    passed: list[Path] = field(default_factory=list)
    slice_rows: list[pl.DataFrame] = field(default_factory=list)
    slice_rejected: list[pl.DataFrame] = field(default_factory=list)
    slice_rules: list[pl.DataFrame] = field(default_factory=list)
    quality: list[pl.DataFrame] = field(default_factory=list)

    def totals(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """(rows, rejected rows, failures per rule) per slice over every chunk."""
        slice_schema = {"_batch": pl.String(), "_facility": pl.String()}

        def total(frames: list[pl.DataFrame], by: list[str], column: str) -> pl.DataFrame:
            schema = {**slice_schema, **({"rule": pl.String()} if "rule" in by else {}), column: pl.Int64()}
            return pl.concat([pl.DataFrame(schema=schema), *frames]).group_by(by).agg(pl.col(column).sum())

        return (
            total(self.slice_rows, SLICE, "rows"),
            total(self.slice_rejected, SLICE, "rejected"),
            total(self.slice_rules, [*SLICE, "rule"], "n"),
        )

    def quality_counts(self) -> list[dict]:
        if not self.quality:
            return []
        counts = pl.concat(self.quality).group_by("_batch", "_facility", "rule", "severity")
        counts = counts.agg(pl.col("rows").sum()).sort("_batch", "_facility", "rule", "severity")
        return counts.rename({"_batch": "batch_id", "_facility": "facility"}).to_dicts()


def _audit_chunk(
    rows: pl.DataFrame, spec: SourceSpec, schema, result: SilverResult, audit: _Audit, rejects: StagedFiles
) -> pl.DataFrame:
    """Type and check one chunk of bronze rows: rejects staged for quarantine, counts added to `audit` and
    `result`; returns the passing rows."""
    typed = apply_types(rows, spec)
    cast_failed = typed.failures.group_by("_row").agg(pl.col("rule").first(), pl.col("reason").first())
    clean = typed.frame.with_row_index("_row").join(cast_failed.select("_row"), on="_row", how="anti")
    del typed
    gate = evaluate(clean.drop("_row"), spec, schema=schema)
    gate_rows = gate.rejected.join(
        clean.select("_row", *LINEAGE_COLUMNS[:3]), on=list(LINEAGE_COLUMNS[:3]), how="inner"
    ).select("_row", "rule", "reason")
    del clean
    rejected = pl.concat([cast_failed.select("_row", "rule", "reason"), gate_rows])
    quarantine = _rejected_rows(rows, rejected, spec.column_names())
    result.rejected += quarantine.select(LINEAGE_COLUMNS[:3]).unique().height
    result.rules.update(dict(quarantine.group_by("rule").len().iter_rows()))
    result.rejected_by_facility.update(dict(quarantine.group_by("_facility").len().iter_rows()))
    result.warnings.update(gate.warnings)
    audit.quality.append(_quality_counts(quarantine, gate))
    audit.slice_rows.append(rows.group_by(SLICE).agg(pl.len().cast(pl.Int64).alias("rows")))
    audit.slice_rejected.append(
        quarantine.select(*SLICE, *LINEAGE_COLUMNS[:3])
        .unique()
        .group_by(SLICE)
        .agg(pl.len().cast(pl.Int64).alias("rejected"))
    )
    audit.slice_rules.append(quarantine.group_by(*SLICE, "rule").agg(pl.len().cast(pl.Int64).alias("n")))
    rejects.write_frame(quarantine)
    return gate.passed


def batch_filter(day: date, todo: list[str], again: list[HeldSlice]) -> BooleanExpression:
    """The day's rows of the new batches, and of each slice taken up again only its facility's rows."""
    parts: list[BooleanExpression] = [In("_batch", todo)] if todo else []
    facilities: dict[str, list[str]] = {}
    for item in again:
        facilities.setdefault(item.batch_id, []).append(item.facility)
    parts += [And(EqualTo("_batch", batch), In("_facility", names)) for batch, names in facilities.items()]
    return And(EqualTo("_landing_day", day.isoformat()), reduce(Or, parts))


def _slice_outcomes(audit: _Audit, spec: SourceSpec, released: set[tuple[str, str]]) -> pl.DataFrame:
    """One gate decision per facility and batch (see `facility_gate`); a released slice is never held."""
    counts, rejected, rules = audit.totals()
    rules = rules.group_by(SLICE).agg(pl.struct("rule", "n").alias("rules"))
    decided = facility_gate(
        counts.join(rejected, on=SLICE, how="left").with_columns(pl.col("rejected").fill_null(0)), spec
    )
    released_slices = pl.DataFrame(
        [(*key, True) for key in sorted(released)],
        schema={"_batch": pl.String(), "_facility": pl.String(), "released": pl.Boolean()},
        orient="row",
    )
    return (
        decided.join(released_slices, on=SLICE, how="left")
        .with_columns(pl.col("released").fill_null(False))
        .with_columns((pl.col("held") & ~pl.col("released")).alias("held"))
        .join(rules, on=SLICE, how="left")
        .sort(SLICE)
    )


def _properties(todo: list[str], again: list[HeldSlice]) -> dict[str, str]:
    return {SILVER_BATCHES: json.dumps(todo + sorted({item.batch_id for item in again}))}


def may_hold_earlier_rows(tables: list[Table], bronze: Table, batches: set[str]) -> bool:
    """Whether silver (`tables`: the silver table, its quarantine) may already hold rows of these batches'
    archives: one of the batches committed there before its ledger update (a crash), or a bronze load of
    one that replaced earlier rows of its archives (a backfill, a re-sent file, a retry). Read from the
    snapshots' summaries: finding out from the rows means a filtered delete, which reads every file of the
    day that it cannot rule out by bounds, so each first load would read the day so far."""
    for table in tables:
        for snapshot in table.snapshots():
            taken = snapshot.summary.get(SILVER_BATCHES) if snapshot.summary else None
            if taken and batches.intersection(json.loads(taken)):
                return True
    return any(
        snapshot.summary.operation != Operation.APPEND and snapshot.summary.get(BATCH_PROPERTY) in batches
        for snapshot in bronze.snapshots()
        if snapshot.summary
    )


def _audit_and_quarantine(
    lake: Lake,
    spec: SourceSpec,
    day: date,
    todo: list[str],
    again: list[HeldSlice],
    chunks: Chunks,
    folder: Path,
    released: set[tuple[str, str]],
    result: SilverResult,
    rejects_table: Table,
    replace: bool,
) -> pl.DataFrame:
    """Audit every chunk (passing rows to `folder`, their paths in `chunks.passed`), record the quality
    counts, replace this stage's rejects of the run's archives; returns the gate's decision per slice."""
    ledger = lake.ledger
    schema = build_schema(spec)
    rejects = StagedFiles(rejects_table)
    audit = _Audit()
    try:
        for number, path in enumerate(chunks.paths):
            passed = _audit_chunk(pl.read_parquet(path), spec, schema, result, audit, rejects)
            audit.passed.append(folder / f"passed-{number:05d}.parquet")
            write_scratch(passed, audit.passed[-1])
            path.unlink()
    except BaseException:
        rejects.discard()
        raise
    chunks.passed = audit.passed
    counts = audit.quality_counts()
    ledger.record_quality(spec.name, "silver", day, todo, [c for c in counts if c["batch_id"] in todo])
    for item in again:  # only that facility's counts of an earlier batch are replaced
        mine = [c for c in counts if (c["batch_id"], c["facility"]) == (item.batch_id, item.facility)]
        ledger.record_quality(spec.name, "silver", day, [item.batch_id], mine, facilities=[item.facility])
    # Replace this stage's rejects of these archives (a re-run), leaving bronze-stage rejects alone:
    # every earlier silver reject of them, as a bronze backfill gives them new batch ids.
    earlier = And(EqualTo("stage", "silver"), In("_archive", sorted(chunks.archives)))
    replace_with_files(rejects, earlier if replace else AlwaysFalse(), _properties(todo, again))
    return _slice_outcomes(audit, spec, released)


def load_silver(
    lake: Lake, spec: SourceSpec, day: date, *, full: bool = False, chunk_rows: int = CHUNK_ROWS
) -> SilverResult:
    """Take the day's new bronze batches into `silver.<source>` (all of them when `full`), and take up
    again the day's held slices that an operator released or that changed metadata may now pass."""
    started = time.perf_counter()
    name = consumer(spec.name)
    version = metadata_version(spec)
    result = SilverResult(table=name, threshold=spec.quality.max_error_rate)
    ledger = lake.ledger
    loaded = ledger.loaded_batches(spec.name, day)
    supersede(ledger, spec.name, day, sorted(loaded))
    todo = sorted(loaded if full else loaded - ledger.processed_batches(name, day))
    again = [item for item in to_evaluate(ledger, spec.name, version, day) if item.batch_id not in todo]
    released = {
        (item.batch_id, item.facility)
        for item in held_slices(ledger, spec.name, day=day, statuses=(RELEASED,))
    }
    result.batches = todo
    result.reevaluated = len(again)
    if not todo and not again:
        return result
    bronze = bronze_table(lake.catalog, spec)
    rejects_table = quarantine_table(lake.catalog, spec)
    try:  # one metadata read (`table_exists` would load the table too)
        silver_tables = [rejects_table, lake.catalog.load_table(name)]
    except NoSuchTableError:
        silver_tables = [rejects_table]
    batches = {*todo, *(item.batch_id for item in again)}
    replace = full or may_hold_earlier_rows(silver_tables, bronze, batches)
    with tempfile.TemporaryDirectory(prefix=f"medlake-silver-{spec.name}-") as scratch:
        folder = Path(scratch)
        chunks = spill_chunks(bronze, batch_filter(day, todo, again), spec, folder, chunk_rows)
        result.rows_in = chunks.rows
        outcomes = _audit_and_quarantine(
            lake, spec, day, todo, again, chunks, folder, released, result, rejects_table, replace
        )
        held_back = outcomes.filter(pl.col("held"))
        result.held.update(
            dict(held_back.group_by("_facility").agg((pl.col("rows") - pl.col("rejected")).sum()).iter_rows())
        )
        published = outcomes.filter(~pl.col("held"))
        result.published_facilities = published.get_column("_facility").n_unique()
        result.released = outcomes.filter(pl.col("released")).height
        result.rows_written = int(published.select((pl.col("rows") - pl.col("rejected")).sum()).item() or 0)
        if result.rows_written:
            docs = table_column_docs(spec, name)  # the Iceberg column docs, from the source metadata
            table = ensure_table(lake.catalog, name, silver_schema(spec), spec.write.partition_by, docs)
            held_keys = held_back.select(SLICE)

            def publish(path: Path) -> Chunk:
                if held_keys.is_empty():
                    return path  # every passing row is published: the merge takes the file as it is
                return lambda: pl.read_parquet(path).join(held_keys, on=SLICE, how="anti")

            merged = merge_chunks(
                table,
                [publish(path) for path in chunks.passed],
                mode=spec.write.mode,
                key=spec.write.primary_key,
                sequence_by=spec.write.sequence_by,
                sequence_ranks=spec.write.sequence_ranks or None,
                delete_marker=spec.write.delete_marker_tuple,
                snapshot_properties=_properties(todo, again),
                replace_archives=replace,
            )
            result.snapshot_id = merged.metadata.current_snapshot_id
    # After the commit: a crash before this line re-runs the batches, and the merge is idempotent.
    record(
        ledger,
        spec.name,
        day,
        [
            SliceOutcome(
                batch_id=row["_batch"],
                facility=row["_facility"],
                rows=row["rows"],
                rejected=row["rejected"],
                error_rate=row["error_rate"],
                threshold=row["threshold"],
                rules={item["rule"]: item["n"] for item in row["rules"] or []},
                held=row["held"],
            )
            for row in outcomes.iter_rows(named=True)
        ],
        version,
        consumer=name,
    )
    ledger.mark_processed(name, spec.name, day, todo)
    result.seconds = time.perf_counter() - started
    return result
