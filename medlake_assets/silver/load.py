"""Bring one silver table up to date for a landing day: type, audit, quarantine, then publish.

Incremental: only the bronze batches of the day that this table has not taken in yet (the ledger's
`medlake_processed`). Audit before publish: the batch is typed and checked first; when its error rate is
above the source's threshold nothing is committed to silver (the gate fails and the batches stay
unprocessed), otherwise the passing rows are merged in one commit and the failing rows go to
`quarantine.<source>` with their rule and reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date

import polars as pl
import pyarrow as pa
from pyiceberg.expressions import And, EqualTo, In
from pyiceberg.io.pyarrow import schema_to_pyarrow

from medlake_assets.lake import Lake
from medlake_assets.quality.gate import evaluate
from medlake_assets.spec import SourceSpec
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
    published: bool = True
    seconds: float = 0.0
    snapshot_id: int | None = None

    @property
    def error_rate(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0


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


def load_silver(lake: Lake, spec: SourceSpec, day: date, *, full: bool = False) -> SilverReport:
    """Take the day's new bronze batches into `silver.<source>` (all of them when `full`)."""
    started = time.perf_counter()
    name = consumer(spec.name)
    report = SilverReport(table=name, threshold=spec.quality.max_error_rate)
    loaded = lake.ledger.loaded_batches(spec.name, day)
    todo = sorted(loaded if full else loaded - lake.ledger.processed_batches(name, day))
    report.batches = todo
    if not todo:
        return report
    bronze = bronze_table(lake.catalog, spec)
    scan = bronze.scan(row_filter=And(EqualTo("_landing_day", day.isoformat()), In("_batch", todo)))
    rows = pl.from_arrow(scan.to_arrow())
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
    lake.ledger.record_quality(spec.name, "silver", day, todo, _quality_counts(quarantine, gate))
    # Replace this stage's rejects of these batches (a re-run), leaving bronze-stage rejects alone.
    rejects_table = quarantine_table(lake.catalog, spec)
    properties = {"medlake.silver_batches": json.dumps(todo)}
    target = arrow_schema(rejects_table)
    replace_rows(
        rejects_table,
        quarantine.select(target.names).to_arrow().cast(target),
        # Every earlier silver reject of these archives: a bronze backfill gives them new batch ids.
        And(EqualTo("stage", "silver"), In("_archive", rows.get_column("_archive").unique().to_list())),
        properties,
    )
    if report.error_rate > report.threshold:
        report.published = False
        report.seconds = time.perf_counter() - started
        return report
    table = ensure_table(lake.catalog, name, silver_schema(spec), spec.write.partition_by)
    merged = merge_into(
        table,
        gate.passed,
        mode=spec.write.mode,
        key=spec.write.primary_key,
        sequence_by=spec.write.sequence_by,
        sequence_ranks=spec.write.sequence_ranks or None,
        delete_marker=spec.write.delete_marker_tuple,
        snapshot_properties=properties,
    )
    report.rows_written = gate.passed.height
    report.snapshot_id = merged.metadata.current_snapshot_id
    lake.ledger.mark_processed(name, spec.name, day, todo)
    report.seconds = time.perf_counter() - started
    return report
