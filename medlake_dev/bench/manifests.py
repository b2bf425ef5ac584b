"""`medlake bench manifests`: what a table's manifests cost as a day of runs adds them, merged and not.

Two pairs of tables on an S3 endpoint (moto's server on loopback unless `MEDLAKE_S3_ENDPOINT_URL` is set),
each pair the same but for manifest merging (`lake.manifests`), take the same commits in the same run:
per run, a bronze-shaped table gets a batch's rows appended (`Table.append`, as a first load does), and
a silver-shaped table (8 partitions) has one partition's file replaced (`commit_files` with `replaced`, as
a merge does). At each checkpoint both tables of a pair plan a scan of one batch's rows (what a silver
step reads from bronze; one partition in silver), and their manifests are counted.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from rich.table import Table as RichTable

BRONZE_COLUMNS = 20
ROWS_PER_RUN = 2_000
ARCHIVES_PER_RUN = 10
PARTS = 8


@dataclass
class Checkpoint:
    runs: int
    manifests: dict[str, int]  # "<layer> <merged|unmerged>" -> manifests of the current snapshot
    plan_seconds: dict[str, float]  # the same keys -> median of 3 plannings
    commit_seconds: dict[str, float]  # the same keys -> mean commit time since the last checkpoint
    rows: dict[str, int]  # the same keys -> rows of the current snapshot (equal within a pair)


@dataclass
class ManifestBench:
    checkpoints: list[Checkpoint]

    def __rich__(self) -> RichTable:
        table = RichTable(
            title="medlake bench manifests: unmerged / merged, on the same S3 endpoint in the same run"
        )
        for column in ("runs", "layer", "manifests", "plan s", "plan ratio", "commit s"):
            table.add_column(column, justify="right")
        for point in self.checkpoints:
            for layer in ("bronze", "silver"):
                off, on = f"{layer} unmerged", f"{layer} merged"
                table.add_row(
                    str(point.runs),
                    layer,
                    f"{point.manifests[off]} / {point.manifests[on]}",
                    f"{point.plan_seconds[off]:.3f} / {point.plan_seconds[on]:.3f}",
                    f"{point.plan_seconds[off] / point.plan_seconds[on]:.1f}x",
                    f"{point.commit_seconds[off]:.3f} / {point.commit_seconds[on]:.3f}",
                )
        return table


def _bronze_rows(run: int, rows: int) -> pa.Table:
    archives = [f"archive-{run:05d}-{number % ARCHIVES_PER_RUN}" for number in range(rows)]
    columns = {
        f"field_{column}": [f"value {run}-{number}-{column}" for number in range(rows)]
        for column in range(BRONZE_COLUMNS)
    }
    return pa.table({"landing_day": ["2026-12-04"] * rows, "_archive": archives, **columns})


def _silver_rows(run: int, part: int) -> pa.Table:
    """The rows of one partition of the silver-shaped table, as a merge writes them back."""
    keys = [key for key in range(200) if key % PARTS == part]
    schema = pa.schema([("key", pa.int64()), ("part", pa.int64()), ("run", pa.int64())])
    return pa.table({"key": keys, "part": [part] * len(keys), "run": [run] * len(keys)}, schema)


def run_manifest_benchmark(
    runs: int = 240, every: int = 60, rows_per_run: int = ROWS_PER_RUN, work_dir: Path | None = None
) -> ManifestBench:
    import boto3
    from pyiceberg.expressions import AlwaysFalse, EqualTo
    from pyiceberg.transforms import IdentityTransform

    from medlake_assets.ingest.bronze import TABLE_PROPERTIES
    from medlake_assets.lake import Lake
    from medlake_assets.lake.catalog import ensure_table
    from medlake_assets.lake.files import StagedFiles, commit_files
    from medlake_assets.lake.manifests import MERGE_PROPERTIES
    from medlake_assets.lake.settings import load_settings
    from medlake_dev.bench.scale import s3_endpoint

    unmerged = {key: value for key, value in TABLE_PROPERTIES.items() if key not in MERGE_PROPERTIES}
    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-manifests-"))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with s3_endpoint(os.environ.get("MEDLAKE_S3_ENDPOINT_URL")) as endpoint:
        bucket = f"medlake-bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        env = {
            "MEDLAKE_HOME": str(work),
            "MEDLAKE_STORE_URL": f"s3://{bucket}/lake",
            "MEDLAKE_S3_ENDPOINT_URL": endpoint,
        }
        catalog = Lake(load_settings({**os.environ, **env})).catalog
        bronze_schema = _bronze_rows(0, 1).schema
        silver_schema = _silver_rows(0, 0).schema
        tables = {}
        for label, properties in (("unmerged", unmerged), ("merged", TABLE_PROPERTIES)):
            for layer, schema, column in (
                ("bronze", bronze_schema, "landing_day"),
                ("silver", silver_schema, "part"),
            ):
                tables[f"{layer} {label}"] = ensure_table(
                    catalog,
                    f"{layer}.bench_{label}",
                    schema,
                    [(column, IdentityTransform(), column)],
                    properties,
                )
        commits: dict[str, list[float]] = {name: [] for name in tables}
        checkpoints = []
        for run in range(1, runs + 1):
            for name, table in tables.items():
                started = time.perf_counter()
                if name.startswith("bronze"):
                    table.append(_bronze_rows(run, rows_per_run))
                else:
                    part = run % PARTS
                    staged = StagedFiles(table)
                    staged.write(_silver_rows(run, part))
                    replaced = [
                        task.file for task in table.scan(row_filter=EqualTo("part", part)).plan_files()
                    ]
                    commit_files(table, staged.files, AlwaysFalse(), {}, replaced=replaced)
                table.refresh()
                commits[name].append(time.perf_counter() - started)
            if run % every:
                continue
            plans, manifests, rows = {}, {}, {}
            for name, table in tables.items():
                row_filter = (
                    EqualTo("_archive", f"archive-{run:05d}-0")
                    if name.startswith("bronze")
                    else EqualTo("part", 7)
                )
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    list(table.scan(row_filter=row_filter).plan_files())
                    timings.append(time.perf_counter() - started)
                plans[name] = statistics.median(timings)
                snapshot = table.current_snapshot()
                manifests[name] = len(snapshot.manifests(table.io))
                rows[name] = int(snapshot.summary["total-records"])
            since = {name: statistics.mean(times[-every:]) for name, times in commits.items()}
            checkpoints.append(Checkpoint(run, manifests, plans, since, rows))
    return ManifestBench(checkpoints)
