"""`medlake bench merge`: a silver upsert of one production-sized batch, against pyiceberg's Table.upsert.

A lab_results-shaped silver table (key facility_id, order_id, test_code; identity partitions on
facility_id) receives a batch of changes from the facilities a run's archives come from: updates,
corrections arriving out of order (older than the stored row, so they must lose), exact duplicates, new
keys and deletes. The merge (`merge_into`: the data files holding the batch's keys read one at a time,
Polars upsert, one commit) runs in a fresh process so that its peak RSS is its own.
The baseline is `Table.upsert` on a smaller table, also in its own process and stopped after a time limit
(then reported as a lower bound).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
from rich.table import Table as RichTable

KEY = ["facility_id", "order_id", "test_code"]
SEQUENCE = ["result_ts", "result_status"]
RANKS = {"result_status": ["P", "F", "C"]}
DELETE_MARKER = ("op", "D")
TESTS_PER_ORDER = 5
LOINC = ["2345-7", "2160-0", "718-7", "4548-4", "2951-2"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class MergeRun:
    rows: int
    changes: int
    touched_rows: int  # rows of the data files the merge replaced (read, and written again)
    seconds: float  # read, merge and one commit (`merge_into`)
    peak_rss_mb: float


@dataclass
class MergeBenchmark:
    facilities: int
    touched_facilities: int
    merge: MergeRun
    baseline_merge: MergeRun | None
    baseline_upsert_seconds: float | None
    baseline_timed_out: bool
    baseline_limit_seconds: float

    @property
    def ratio(self) -> float | None:
        if self.baseline_merge is None or self.baseline_upsert_seconds is None:
            return None
        return self.baseline_upsert_seconds / self.baseline_merge.seconds

    def __rich__(self) -> RichTable:
        table = RichTable(title="medlake bench merge (upsert)", show_header=True)
        table.add_column("measure")
        table.add_column("value", justify="right")
        run = self.merge
        rows = [
            ("table rows / batch changes", f"{run.rows:,} / {run.changes:,}"),
            ("facilities (partitions) touched", f"{self.touched_facilities} of {self.facilities}"),
            ("rows of the replaced data files (read and rewritten)", f"{run.touched_rows:,}"),
            ("read, merge and one commit", f"{run.seconds:.2f} s"),
            ("changes/s", f"{run.changes / run.seconds:,.0f}"),
            ("table rows/s", f"{run.rows / run.seconds:,.0f}"),
            ("peak RSS of the merge process", f"{run.peak_rss_mb:,.0f} MB"),
        ]
        if self.baseline_merge is not None:
            base = self.baseline_merge
            upsert = (
                f"> {self.baseline_limit_seconds:.0f} s (stopped)"
                if self.baseline_timed_out
                else f"{self.baseline_upsert_seconds:.2f} s"
            )
            ratio = f"{'>= ' if self.baseline_timed_out else ''}{self.ratio:.1f}x"
            rows += [
                ("baseline table rows / changes", f"{base.rows:,} / {base.changes:,}"),
                ("medlake merge on the baseline table", f"{base.seconds:.2f} s"),
                ("pyiceberg Table.upsert on the baseline table", upsert),
                ("speed-up over Table.upsert", ratio),
            ]
        for name, value in rows:
            table.add_row(name, value)
        return table


def silver_rows(rows: int, facilities: int, seed: int) -> pl.DataFrame:
    """A silver lab_results table of `rows` rows, generated with vectorized expressions only."""
    index = pl.int_range(rows, dtype=pl.Int64, eager=True).alias("i")
    order = index // TESTS_PER_ORDER
    frame = pl.DataFrame({"i": index, "order": order})
    return _rows(frame, facilities, seed, status="F", batch="initial", minutes=pl.col("i") % 100_000)


def _rows(
    frame: pl.DataFrame, facilities: int, seed: int, *, status: str | pl.Expr, batch: str, minutes: pl.Expr
) -> pl.DataFrame:
    """Lab result rows for (i, order) pairs: the order fixes the facility, i the test within the order."""
    hashed = pl.col("i").hash(seed)
    facility = (pl.col("order") % facilities).cast(pl.String).str.zfill(5)
    status_expr = pl.lit(status) if isinstance(status, str) else status
    return frame.select(
        pl.concat_str(pl.lit("FAC"), facility).alias("facility_id"),
        pl.concat_str(pl.lit("PAT"), (pl.col("order") // 3).cast(pl.String)).alias("patient_id"),
        # Zero-padded: order numbers that grow with time also sort with time, as EMR order numbers do.
        pl.concat_str(pl.lit("ORD"), pl.col("order").cast(pl.String).str.zfill(10)).alias("order_id"),
        pl.lit(pl.Series(LOINC)).gather(pl.col("i") % TESTS_PER_ORDER).alias("test_code"),
        pl.lit("Glucose").alias("test_name"),
        ((hashed % 2000).cast(pl.Float64) / 10).round(1).cast(pl.String).alias("value"),
        pl.lit("mg/dL").alias("unit"),
        pl.lit("70-99").alias("reference_range"),
        pl.when(hashed % 7 == 0).then(pl.lit("H")).otherwise(pl.lit("N")).alias("abnormal_flag"),
        status_expr.alias("result_status"),
        (pl.lit(T0) + pl.duration(minutes=minutes)).dt.cast_time_unit("us").alias("result_ts"),
        pl.lit("U").alias("op"),
        pl.concat_str(pl.lit(f"{batch}/"), facility, pl.lit(".zip")).alias("_archive"),
        pl.lit("results.csv").alias("_member"),
        pl.col("i").alias("_record"),
        pl.concat_str(pl.lit("FAC"), facility).alias("_facility"),
        pl.lit(date(2026, 1, 1)).alias("_landing_day"),
        pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("_ingested_at"),
        pl.lit(batch).alias("_batch"),
    )


def change_batch(rows: int, changes: int, facilities: int, touched: int, seed: int) -> pl.DataFrame:
    """A batch from `touched` facilities: 50% updates, 10% older out-of-order corrections (they lose),
    10% exact duplicates of updates, 20% new keys, 10% deletes."""
    orders = rows // TESTS_PER_ORDER
    per_facility = orders // facilities
    rng = pl.int_range(changes, dtype=pl.Int64, eager=True)
    noise = (rng.hash(seed + 1) % 2**62).cast(pl.Int64)
    # The facility comes from its own hash so that it is independent of the change kind (rng % 10).
    facility = ((rng.hash(seed + 2) % 2**62).cast(pl.Int64) % touched) * (facilities // touched)
    existing_order = facility + facilities * (noise % per_facility)
    new_order = orders + facility + facilities * (rng // touched)
    kind = pl.Series([*["update"] * 5, "late", "duplicate", "insert", "insert", "delete"])[
        (rng % 10).to_list()
    ]
    frame = pl.DataFrame(
        {"n": rng, "kind": kind, "noise": noise, "existing": existing_order, "new": new_order}
    )
    frame = frame.with_columns(
        pl.when(pl.col("kind") == "insert").then(pl.col("new")).otherwise(pl.col("existing")).alias("order"),
        (pl.col("noise") % TESTS_PER_ORDER).alias("test"),
    )
    frame = frame.with_columns((pl.col("order") * TESTS_PER_ORDER + pl.col("test")).alias("i"))
    minutes = pl.when(pl.col("kind") == "late").then(pl.lit(-60)).otherwise(pl.lit(200_000))
    batch = _rows(
        frame.select("i", "order", "kind"),
        facilities,
        seed,
        status=pl.when(pl.col("kind") == "late").then(pl.lit("P")).otherwise(pl.lit("C")),
        batch="batch-1",
        minutes=minutes,
    )
    batch = batch.with_columns(
        pl.when(frame["kind"] == "delete").then(pl.lit("D")).otherwise(pl.lit("U")).alias("op"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("_record"),
    )
    # Duplicates: the "duplicate" rows repeat an update row exactly (same key, sequence and values).
    updates = batch.filter(frame["kind"] == "update")
    duplicates = updates.head(int((frame["kind"] == "duplicate").sum()))
    return pl.concat([batch.filter(frame["kind"] != "duplicate"), duplicates])


def _catalog(work: Path):
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog(
        "bench", uri=f"sqlite:///{work / 'catalog.db'}", warehouse=f"file://{work / 'warehouse'}"
    )
    catalog.create_namespace_if_not_exists("silver")
    return catalog


def _create_table(work: Path, name: str, initial: pl.DataFrame, buckets: int = 0):
    """The table, partitioned by facility_id: identity, or `buckets` hash buckets as lab_results' spec."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import BucketTransform, IdentityTransform
    from pyiceberg.types import BooleanType, DateType, LongType, NestedField, StringType, TimestamptzType

    kinds = {pl.String: StringType(), pl.Int64: LongType(), pl.Date: DateType(), pl.Boolean: BooleanType()}
    fields = [
        (column, TimestamptzType() if dtype == pl.Datetime("us", "UTC") else kinds[dtype])
        for column, dtype in initial.schema.items()
    ]
    schema = Schema(
        *[NestedField(i, column, kind, required=False) for i, (column, kind) in enumerate(fields, 1)]
    )
    transform = BucketTransform(buckets) if buckets else IdentityTransform()
    spec = PartitionSpec(
        PartitionField(1, 1000, transform, f"facility_id_bucket_{buckets}" if buckets else "facility_id")
    )
    table = _catalog(work).create_table(
        f"silver.{name}",
        schema=schema,
        partition_spec=spec,
        properties={"write.parquet.compression-codec": "zstd"},
    )
    table.append(initial.to_arrow().cast(schema.as_arrow()))
    return table


def _merge_child(work: str, name: str, changes_path: str) -> MergeRun:
    """Runs in a fresh process: read the touched partitions, merge, commit, report timings and peak RSS."""
    from medlake_dev.bench.ingest import PeakRss

    # Sampled here, not `ru_maxrss`: Linux carries the parent's high-water mark (the parent built the
    # 10M-row table) into a spawned child, which made the earlier 5.1 GB figure the parent's, not the merge's.
    with PeakRss().watch() as rss:
        return _merge(work, name, changes_path, rss)


def _timed_upsert(table, changes: pl.DataFrame, batch: str):
    """`merge_into` as silver.lab_results runs it; returns the refreshed table and the seconds it took."""
    from medlake_assets.silver.merge import merge_into

    started = time.perf_counter()
    table = merge_into(
        table,
        changes,
        mode="upsert",
        key=KEY,
        sequence_by=SEQUENCE,
        sequence_ranks=RANKS,
        delete_marker=DELETE_MARKER,
        snapshot_properties={"medlake.batch": batch},
    )
    return table, time.perf_counter() - started


def _merge(work: str, name: str, changes_path: str, rss) -> MergeRun:
    table = _catalog(Path(work)).load_table(f"silver.{name}")
    changes = pl.read_parquet(changes_path)
    rows = int(table.current_snapshot().summary["total-records"])
    table, seconds = _timed_upsert(table, changes, "batch-1")
    return MergeRun(
        rows=rows,
        changes=len(changes),
        touched_rows=int(table.current_snapshot().summary.get("deleted-records", 0)),
        seconds=seconds,
        peak_rss_mb=rss.megabytes,
    )


def _upsert_child(work: str, name: str, changes_path: str) -> float:
    """Runs in a fresh process: pyiceberg's Table.upsert of the batch's latest row per key."""
    table = _catalog(Path(work)).load_table(f"silver.{name}")
    changes = pl.read_parquet(changes_path)
    # Table.upsert has no sequence, no deletes and refuses duplicate keys: give it the latest row per key
    # (so it does less than the medlake merge, which makes the comparison a conservative one).
    latest = (
        changes.sort(SEQUENCE[0])
        .unique(subset=KEY, keep="last")
        .with_columns(pl.lit(False).alias("_deleted"))
    )
    arrow = latest.select(table.schema().column_names).to_arrow().cast(table.schema().as_arrow())
    started = time.perf_counter()
    table.upsert(arrow, join_cols=KEY)
    return time.perf_counter() - started


def _in_child(function, *args, timeout: float | None = None):
    """Run `function(*args)` in a fresh spawned process; None if it ran past `timeout` (then killed)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result = pool.apply_async(function, args)
        try:
            return result.get(timeout=timeout)
        except multiprocessing.TimeoutError:
            pool.terminate()
            return None


def _prepare(
    work: Path, name: str, rows: int, changes: int, facilities: int, touched: int, seed: int
) -> Path:
    initial = silver_rows(rows, facilities, seed).with_columns(pl.lit(False).alias("_deleted"))
    _create_table(work, name, initial)
    del initial
    path = work / f"{name}-changes.parquet"
    change_batch(rows, changes, facilities, touched, seed).write_parquet(path)
    return path


def run_merge_benchmark(
    rows: int = 10_000_000,
    changes: int = 100_000,
    baseline_rows: int = 1_000_000,
    work_dir: Path | None = None,
    *,
    facilities: int = 1000,
    touched_facilities: int = 100,
    baseline_limit_seconds: float = 600.0,
    seed: int = 7,
    console=None,
) -> MergeBenchmark:
    """Build the tables, merge one batch into each, and time Table.upsert on the baseline table."""
    if not 0 < touched_facilities <= facilities:
        raise ValueError("touched_facilities must be between 1 and facilities")
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)

    def status(message: str):
        return console.status(message) if console is not None else _Quiet()

    with status(f"building a {rows:,}-row silver table"):
        changes_path = _prepare(work, "lab_results", rows, changes, facilities, touched_facilities, seed)
    with status(f"merging {changes:,} changes"):
        merge = _in_child(_merge_child, str(work), "lab_results", str(changes_path))
    baseline_merge = upsert_seconds = None
    timed_out = False
    if baseline_rows:
        with status(f"building two {baseline_rows:,}-row baseline tables"):
            base_path = _prepare(
                work, "baseline", baseline_rows, changes, facilities, touched_facilities, seed
            )
            _prepare(work, "baseline_upsert", baseline_rows, changes, facilities, touched_facilities, seed)
        with status("medlake merge on the baseline table"):
            baseline_merge = _in_child(_merge_child, str(work), "baseline", str(base_path))
        with status(f"pyiceberg Table.upsert on the baseline table (limit {baseline_limit_seconds:.0f} s)"):
            upsert_seconds = _in_child(
                _upsert_child, str(work), "baseline_upsert", str(base_path), timeout=baseline_limit_seconds
            )
        if upsert_seconds is None:
            timed_out, upsert_seconds = True, baseline_limit_seconds
    return MergeBenchmark(
        facilities=facilities,
        touched_facilities=touched_facilities,
        merge=merge,
        baseline_merge=baseline_merge,
        baseline_upsert_seconds=upsert_seconds,
        baseline_timed_out=timed_out,
        baseline_limit_seconds=baseline_limit_seconds,
    )


@dataclass
class DayRun:
    table_rows: int
    changes: int
    replaced_files: int
    seconds: float


@dataclass
class MergeDay:
    """`medlake bench merge-day`: each batch's merge time as the day's table grows."""

    runs: list[DayRun]
    window: int
    orders: int
    facilities: int
    buckets: int

    @property
    def ratio(self) -> float:
        first = sum(run.seconds for run in self.runs[: self.window])
        return sum(run.seconds for run in self.runs[-self.window :]) / first

    def __rich__(self) -> RichTable:
        table = RichTable(
            title=f"medlake bench merge-day: {len(self.runs)} batches of {self.orders:,} new orders "
            f"({TESTS_PER_ORDER} tests each) and final results of a fifth of the previous batch's orders, "
            f"{self.facilities} facilities in bucket({self.buckets}, facility_id); last/first "
            f"{self.window} = {self.ratio:.2f}x"
        )
        for column in ("batch", "table rows before", "changes", "data files replaced", "merge s"):
            table.add_column(column, justify="right")
        for number, run in enumerate(self.runs, 1):
            table.add_row(
                str(number),
                f"{run.table_rows:,}",
                f"{run.changes:,}",
                str(run.replaced_files),
                f"{run.seconds:.2f}",
            )
        table.add_row(
            "total",
            "",
            f"{sum(r.changes for r in self.runs):,}",
            "",
            f"{sum(r.seconds for r in self.runs):.1f}",
        )
        return table


def day_batch(number: int, orders: int, facilities: int, seed: int) -> pl.DataFrame:
    """Batch `number` of a day in arrival order: `orders` new orders, numbered on from the last batch's,
    with preliminary results, and the final results of a fifth of the previous batch's orders (by hash)."""
    rows = orders * TESTS_PER_ORDER

    def results(start: int, stop: int) -> pl.DataFrame:
        frame = pl.DataFrame({"i": pl.int_range(max(start, 0), stop, dtype=pl.Int64, eager=True)})
        return frame.with_columns((pl.col("i") // TESTS_PER_ORDER).alias("order"))

    new = results(number * rows, (number + 1) * rows).with_columns(pl.lit("P").alias("status"))
    final = results((number - 1) * rows, number * rows).filter(pl.col("order").hash(seed) % 5 == 0)
    frame = pl.concat([new, final.with_columns(pl.lit("F").alias("status"))])
    batch = _rows(
        frame.select("i", "order"),
        facilities,
        seed,
        status=frame["status"],
        batch=f"batch-{number}",
        minutes=pl.lit(number * 10),
    )
    return batch.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_record"))


def run_day_benchmark(
    batches: int = 24,
    orders: int = 20_000,
    facilities: int = 20,
    buckets: int = 16,
    window: int = 3,
    seed: int = 7,
    work_dir: Path | None = None,
) -> MergeDay:
    """Merge `batches` batches of one day, in arrival order, into one silver table; time each merge."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-merge-day-"))
    work.mkdir(parents=True, exist_ok=True)
    empty = day_batch(0, 1, facilities, seed).head(0).with_columns(pl.lit(False).alias("_deleted"))
    table = _create_table(work, "lab_results_day", empty, buckets)
    runs = []
    for number in range(batches):
        changes = day_batch(number, orders, facilities, seed)
        snapshot = table.current_snapshot()
        rows = int(snapshot.summary.get("total-records") or 0) if snapshot else 0
        table, seconds = _timed_upsert(table, changes, f"batch-{number}")
        replaced = int(table.current_snapshot().summary.get("deleted-data-files") or 0)
        runs.append(DayRun(rows, len(changes), replaced, seconds))
    return MergeDay(runs, window, orders, facilities, buckets)


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
