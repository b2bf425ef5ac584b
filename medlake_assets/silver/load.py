"""Bring one silver table up to date for a landing day: type, audit, quarantine, then publish.

Incremental: only the bronze batches of the day that this table has not taken in yet (the ledger's
`medlake_processed`). Audit before publish: the rows are typed and checked first and the failing rows go
to `quarantine.<source>` with their rule and reason. Then the gate decides per facility and batch (a
*slice*, `quality/gate.py: facility_gate`): a slice over its facility's threshold is held back (its
passing rows stay in bronze, the decision goes to `meta.held`, `quality/held.py`); the passing rows of
every other slice are merged in one commit. The batches count as taken in either way: held slices are
taken up again, by themselves, when an operator releases them or when the metadata changes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from functools import reduce

import polars as pl
import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or
from pyiceberg.io.pyarrow import schema_to_pyarrow

from medlake_assets.lake import Lake
from medlake_assets.quality.gate import evaluate, facility_gate, metadata_version
from medlake_assets.quality.held import (
    RELEASED,
    HeldSlice,
    SliceOutcome,
    held_slices,
    record,
    supersede,
    to_evaluate,
)
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs
from medlake_assets.tables.bronze import arrow_schema, bronze_table, quarantine_table, replace_rows
from medlake_assets.tables.merge import LINEAGE_COLUMNS, MERGE_COLUMNS, merge_into
from medlake_assets.tables.silver import ensure_table
from medlake_assets.transforms.typed import apply_types, typed_schema


@dataclass
class SilverReport:
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


def _quality_counts(quarantine: pl.DataFrame, gate) -> list[dict]:
    """Rows per batch, facility, rule and severity: every rejected row (casts included) and every warning."""
    errors = quarantine.group_by("_batch", "_facility", "rule").agg(pl.len().alias("rows"))
    errors = errors.with_columns(pl.lit("error").alias("severity"))
    frames = [errors.select("_batch", "_facility", "rule", "severity", "rows")]
    if gate.by_batch is not None:
        warned = gate.by_batch.filter(pl.col("severity") == "warn")
        frames.append(
            warned.select("_batch", "_facility", "rule", "severity", pl.col("rows").cast(pl.UInt32))
        )
    counts = pl.concat([frame.cast({"rows": pl.Int64}) for frame in frames])
    return counts.rename({"_batch": "batch_id", "_facility": "facility"}).to_dicts()


def _scan_filter(day: date, todo: list[str], again: list[HeldSlice]) -> BooleanExpression:
    """The day's rows of the new batches, and of each slice taken up again only its facility's rows."""
    parts: list[BooleanExpression] = [In("_batch", todo)] if todo else []
    facilities: dict[str, list[str]] = {}
    for item in again:
        facilities.setdefault(item.batch_id, []).append(item.facility)
    parts += [And(EqualTo("_batch", batch), In("_facility", names)) for batch, names in facilities.items()]
    return And(EqualTo("_landing_day", day.isoformat()), reduce(Or, parts))


def _slice_outcomes(
    rows: pl.DataFrame, quarantine: pl.DataFrame, spec: SourceSpec, released: set[tuple[str, str]]
) -> pl.DataFrame:
    """One gate decision per facility and batch (see `facility_gate`); a released slice is never held."""
    slice_key = ["_batch", "_facility"]
    counts = rows.group_by(slice_key).agg(pl.len().alias("rows"))
    rejected = (
        quarantine.select(*slice_key, *LINEAGE_COLUMNS[:3])
        .unique()
        .group_by(slice_key)
        .agg(pl.len().alias("rejected"))
    )
    rules = quarantine.group_by(*slice_key, "rule").agg(pl.len().alias("n"))
    rules = rules.group_by(slice_key).agg(pl.struct("rule", "n").alias("rules"))
    decided = facility_gate(
        counts.join(rejected, on=slice_key, how="left").with_columns(pl.col("rejected").fill_null(0)), spec
    )
    released_slices = pl.DataFrame(
        [(*key, True) for key in sorted(released)],
        schema={"_batch": pl.String(), "_facility": pl.String(), "released": pl.Boolean()},
        orient="row",
    )
    return (
        decided.join(released_slices, on=slice_key, how="left")
        .with_columns(pl.col("released").fill_null(False))
        .with_columns((pl.col("held") & ~pl.col("released")).alias("held"))
        .join(rules, on=slice_key, how="left")
        .sort(slice_key)
    )


def load_silver(lake: Lake, spec: SourceSpec, day: date, *, full: bool = False) -> SilverReport:
    """Take the day's new bronze batches into `silver.<source>` (all of them when `full`), and take up
    again the day's held slices that an operator released or that changed metadata may now pass."""
    started = time.perf_counter()
    name = consumer(spec.name)
    version = metadata_version(spec)
    report = SilverReport(table=name, threshold=spec.quality.max_error_rate)
    ledger = lake.ledger
    loaded = ledger.loaded_batches(spec.name, day)
    supersede(ledger, spec.name, day, sorted(loaded))
    todo = sorted(loaded if full else loaded - ledger.processed_batches(name, day))
    again = [item for item in to_evaluate(ledger, spec.name, version, day) if item.batch_id not in todo]
    released = {
        (item.batch_id, item.facility)
        for item in held_slices(ledger, spec.name, day=day, statuses=(RELEASED,))
    }
    report.batches = todo
    report.reevaluated = len(again)
    if not todo and not again:
        return report
    bronze = bronze_table(lake.catalog, spec)
    rows = pl.from_arrow(bronze.scan(row_filter=_scan_filter(day, todo, again)).to_arrow())
    report.rows_in = rows.height
    typed = apply_types(rows, spec)
    cast_failed = typed.failures.group_by("_row").agg(pl.col("rule").first(), pl.col("reason").first())
    clean = typed.frame.with_row_index("_row").join(cast_failed.select("_row"), on="_row", how="anti")
    gate = evaluate(clean.drop("_row"), spec)
    gate_rows = gate.rejected.join(
        clean.select("_row", *LINEAGE_COLUMNS[:3]), on=list(LINEAGE_COLUMNS[:3]), how="inner"
    ).select("_row", "rule", "reason")
    rejected = pl.concat([cast_failed.select("_row", "rule", "reason"), gate_rows])
    quarantine = _rejected_rows(rows, rejected, spec.column_names())
    report.rejected = quarantine.select(LINEAGE_COLUMNS[:3]).unique().height
    report.rules.update(dict(quarantine.group_by("rule").len().iter_rows()))
    report.rejected_by_facility.update(dict(quarantine.group_by("_facility").len().iter_rows()))
    report.warnings.update(gate.warnings)
    counts = _quality_counts(quarantine, gate)
    ledger.record_quality(spec.name, "silver", day, todo, [c for c in counts if c["batch_id"] in todo])
    for item in again:  # only that facility's counts of an earlier batch are replaced
        mine = [c for c in counts if (c["batch_id"], c["facility"]) == (item.batch_id, item.facility)]
        ledger.record_quality(spec.name, "silver", day, [item.batch_id], mine, facilities=[item.facility])
    # Replace this stage's rejects of these archives (a re-run), leaving bronze-stage rejects alone.
    rejects_table = quarantine_table(lake.catalog, spec)
    properties = {"medlake.silver_batches": json.dumps(todo + sorted({i.batch_id for i in again}))}
    target = arrow_schema(rejects_table)
    replace_rows(
        rejects_table,
        quarantine.select(target.names).to_arrow().cast(target),
        # Every earlier silver reject of these archives: a bronze backfill gives them new batch ids.
        And(EqualTo("stage", "silver"), In("_archive", rows.get_column("_archive").unique().to_list())),
        properties,
    )
    outcomes = _slice_outcomes(rows, quarantine, spec, released)
    held_back = outcomes.filter(pl.col("held"))
    report.held.update(
        dict(held_back.group_by("_facility").agg((pl.col("rows") - pl.col("rejected")).sum()).iter_rows())
    )
    publish = gate.passed.join(
        held_back.select("_batch", "_facility"), on=["_batch", "_facility"], how="anti"
    )
    report.published_facilities = outcomes.filter(~pl.col("held")).get_column("_facility").n_unique()
    report.released = outcomes.filter(pl.col("released")).height
    if publish.height:
        docs = table_column_docs(spec, name)  # the Iceberg column docs, from the source metadata
        table = ensure_table(lake.catalog, name, silver_schema(spec), spec.write.partition_by, docs)
        merged = merge_into(
            table,
            publish,
            mode=spec.write.mode,
            key=spec.write.primary_key,
            sequence_by=spec.write.sequence_by,
            sequence_ranks=spec.write.sequence_ranks or None,
            delete_marker=spec.write.delete_marker_tuple,
            snapshot_properties=properties,
        )
        report.rows_written = publish.height
        report.snapshot_id = merged.metadata.current_snapshot_id
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
    report.seconds = time.perf_counter() - started
    return report
