"""`medlake bench commits`: what a commit and a table load cost as a table's history grows, medlake's
transaction and catalog against pyiceberg's.

Two tables alike (the lake's table properties, manifests merged) take the same commits in the same run,
one through `medlake_assets.lake.commits.Transaction` and the lake's catalog (`LakeCatalog`), the other
through pyiceberg's own `Transaction` and `SqlCatalog` (the baseline) on the same database: per round, a
run's two kinds of commit, a merge append of a new data file (as a bronze batch commits) and an overwrite
replacing one data file (as a silver merge commits, `merging_overwrite`). At each checkpoint: the snapshots
each table holds, the size of its metadata file, the mean seconds of a commit since the checkpoint before,
and of loading medlake's unchanged table through each catalog (as a run's steps load their tables again
and again). The baseline may stop taking commits after `baseline_rounds` (its commits grow ~30x faster),
so that medlake's table alone reaches a production day's history. Local warehouse and SQLite catalog:
what is measured is the lake's own work, not the store's round trips.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from rich.table import Table as RichTable

SCHEMA = pa.schema([("key", pa.int64()), ("round", pa.int64())])
KINDS = ("medlake", "pyiceberg")
PART = 1_000_000  # keys of part 1 are appended, the one key of part 2 is replaced
LOADS = 10  # loads of the unchanged table timed at each checkpoint


@dataclass
class CommitCheckpoint:
    rounds: int
    snapshots: dict[str, int]  # kind -> snapshots of the table (no baseline once it stopped)
    metadata_bytes: dict[str, int]  # kind -> size of the current metadata file
    commit_seconds: dict[str, float]  # kind -> mean seconds of a commit since the last checkpoint
    load_seconds: dict[str, float]  # catalog kind -> mean seconds of loading medlake's unchanged table
    rows: dict[str, int]  # kind -> rows of the current snapshot (equal)

    @property
    def ratio(self) -> float | None:
        if "pyiceberg" not in self.commit_seconds:
            return None
        return self.commit_seconds["pyiceberg"] / self.commit_seconds["medlake"]

    @property
    def load_ratio(self) -> float:
        return self.load_seconds["pyiceberg"] / self.load_seconds["medlake"]


@dataclass
class CommitBench:
    checkpoints: list[CommitCheckpoint]

    def __rich__(self) -> RichTable:
        table = RichTable(
            title="medlake bench commits: pyiceberg's transaction and catalog / medlake's, in the same run"
        )
        columns = ("rounds", "snapshots", "metadata file", "commit s pyiceberg / medlake", "ratio")
        for column in (*columns, "table load ms pyiceberg / medlake", "load ratio"):
            table.add_column(column, justify="right")
        for point in self.checkpoints:
            table.add_row(
                str(point.rounds),
                str(point.snapshots["medlake"]),
                f"{point.metadata_bytes['medlake'] / 1024:.0f} KiB",
                f"{_seconds(point.commit_seconds.get('pyiceberg'))} / {point.commit_seconds['medlake']:.3f}",
                "-" if point.ratio is None else f"{point.ratio:.1f}x",
                f"{point.load_seconds['pyiceberg'] * 1000:.1f} / {point.load_seconds['medlake'] * 1000:.1f}",
                f"{point.load_ratio:.1f}x",
            )
        return table


def _rows(round_: int, part: int) -> pa.Table:
    return pa.table({"key": [part * PART + round_], "round": [round_]}, SCHEMA)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mean_seconds(action, times: int) -> float:
    started = time.perf_counter()
    for _ in range(times):
        action()
    return (time.perf_counter() - started) / times


def run_commit_benchmark(
    rounds: int = 300, every: int = 50, work_dir: Path | None = None, baseline_rounds: int | None = None
) -> CommitBench:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import GreaterThanOrEqual

    from medlake_assets.ingest.bronze import TABLE_PROPERTIES
    from medlake_assets.lake import Lake
    from medlake_assets.lake.catalog import catalog_properties, ensure_table
    from medlake_assets.lake.files import StagedFiles
    from medlake_assets.lake.manifests import merging_overwrite
    from medlake_assets.lake.settings import load_settings

    work = Path(work_dir or tempfile.mkdtemp(prefix="medlake-bench-commits-"))
    settings = load_settings({"MEDLAKE_HOME": str(work)})
    # Each catalog's tables take its own transactions: the lake's tables `lake.commits.Transaction`.
    catalogs = {
        "medlake": Lake(settings).catalog,
        "pyiceberg": SqlCatalog("medlake", **catalog_properties(settings)),  # the same database
    }
    names = {kind: f"silver.bench_commits_{kind}" for kind in KINDS}
    tables = {kind: ensure_table(catalogs[kind], names[kind], SCHEMA, [], TABLE_PROPERTIES) for kind in KINDS}
    commits: dict[str, list[float]] = {kind: [] for kind in KINDS}
    checkpoints = []
    baseline_rounds = rounds if baseline_rounds is None else baseline_rounds
    for round_ in range(1, rounds + 1):
        if round_ == baseline_rounds + 1:
            del tables["pyiceberg"]
        for kind, table in tables.items():
            # A bronze batch's commit: one new data file, merge-appended.
            staged = StagedFiles(table)
            staged.write(_rows(round_, 1))
            started = time.perf_counter()
            transaction = table.transaction()
            with transaction.update_snapshot().merge_append() as append:
                for data_file in staged.files:
                    append.append_data_file(data_file)
            transaction.commit_transaction()
            commits[kind].append(time.perf_counter() - started)
            # A silver merge's commit: the file of the last round's part-2 row replaced by this round's.
            replaced = [task.file for task in table.scan(GreaterThanOrEqual("key", 2 * PART)).plan_files()]
            staged = StagedFiles(table)
            staged.write(_rows(round_, 2))
            started = time.perf_counter()
            transaction = table.transaction()
            with merging_overwrite(transaction, {}) as overwrite:
                for data_file in replaced:
                    overwrite.delete_data_file(data_file)
                for data_file in staged.files:
                    overwrite.append_data_file(data_file)
            transaction.commit_transaction()
            commits[kind].append(time.perf_counter() - started)
        if round_ % every:
            continue
        snapshots, sizes, rows, seconds, loads = {}, {}, {}, {}, {}
        for kind, table in tables.items():
            snapshots[kind] = len(table.metadata.snapshots)
            sizes[kind] = len(table.io.new_input(table.metadata_location))
            rows[kind] = int(table.current_snapshot().summary["total-records"])
            seconds[kind] = statistics.mean(commits[kind][-2 * every :])
        for kind, catalog in catalogs.items():
            loads[kind] = _mean_seconds(lambda catalog=catalog: catalog.load_table(names["medlake"]), LOADS)
        checkpoints.append(CommitCheckpoint(round_, snapshots, sizes, seconds, loads, rows))
    return CommitBench(checkpoints)
