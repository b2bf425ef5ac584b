"""Two `medlake ingest --once` at once on one lake: no failed commit, no batch loaded twice, no duplicate.

The two processes serialise on a lake-wide lock (the second starts once the first is done and finds
nothing left); a batch run that reaches an already loaded batch anyway (the daemon and a CLI run) changes
nothing; a gold report written by two writers at once is redone on fresh metadata, never doubled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter

import dagster as dg
import pyarrow as pa

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.bronze import BATCH_TAG
from medlake_assets.defs.runner import ingest_once
from medlake_assets.gold.run import write_gold
from medlake_assets.gold.spec import load_report
from medlake_assets.ingest.batch import load_batch
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings
from medlake_assets_tests.accounting import accounting_problems
from medlake_assets_tests.defs.test_ingest import assert_lake_matches_manifest
from medlake_assets_tests.lake_helpers import DAY, lineage_keys, local_settings, open_lake, table_rows
from medlake_dev.generate import write_feeds

INGEST = [sys.executable, "-m", "medlake_assets.cli", "ingest", "--once"]
GENERATION = {"facilities": 3, "archives": 24, "seed": 8, "bad_rate": 0.2, "day": DAY, "size_scale": 0.02}


def run_two_ingests(env: dict[str, str], home) -> list[str]:
    logs = [home / f"ingest-{number}.log" for number in (1, 2)]
    processes = [
        subprocess.Popen(INGEST, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for log in logs
    ]
    for process, log in zip(processes, logs, strict=True):
        assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    return [log.read_text() for log in logs]


def batches_of(run: dg.DagsterRun) -> tuple[tuple[str, str], ...]:
    """The ledger batches a run was given: its `medlake/batch/<source>` tags."""
    return tuple(sorted((key, value) for key, value in run.tags.items() if key.startswith(f"{BATCH_TAG}/")))


def assert_each_run_once(instance: dg.DagsterInstance) -> None:
    runs = instance.get_runs()
    per_work = Counter((run.job_name, batches_of(run), run.tags.get("dagster/partition")) for run in runs)
    assert runs and {work: count for work, count in per_work.items() if count > 1} == {}
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}


def assert_no_duplicates(lake: Lake) -> None:
    for namespace in ("bronze", "silver"):
        for _, name in lake.catalog.list_tables(namespace):
            rows = table_rows(lake, f"{namespace}.{name}")
            if namespace == "silver" and "_is_current" in rows.column_names:
                continue  # scd2 keeps every version of a key by design
            keys = lineage_keys(rows)
            assert len(keys) == len(set(keys)), f"{namespace}.{name}: duplicate records"
    for _, name in lake.catalog.list_tables("gold"):
        rows = table_rows(lake, f"gold.{name}").to_pylist()
        assert len({tuple(sorted(row.items(), key=str)) for row in rows}) == len(rows), f"gold.{name}"


def test_two_ingest_once_processes_on_one_embedded_lake(tmp_path, archive_password):
    home = tmp_path / "home"
    manifest = write_feeds(home, **GENERATION)
    env = {
        **os.environ,
        "MEDLAKE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "MEDLAKE_INGEST_WORKERS": "1",
    }
    env.pop("MEDLAKE_PROFILE", None)
    (home / "dagster").mkdir()

    logs = run_two_ingests(env, home)
    for log in logs:
        assert "CommitFailedException" not in log and "Traceback" not in log
    lake = open_lake(local_settings(home))
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert_each_run_once(instance)
    assert_lake_matches_manifest(lake, manifest)
    assert accounting_problems(lake) == []
    assert_no_duplicates(lake)


def test_a_batch_already_loaded_is_not_loaded_again(tmp_path, archive_password):
    """What a second run of the same batch finds (a daemon run and a CLI run racing): nothing to do."""
    home = tmp_path / "home"
    write_feeds(home, facilities=2, archives=6, seed=3, day=DAY, size_scale=0.02)
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        ingest_once(build_definitions(settings), instance, lake, refine_silver=False)
    spec = lake.sources["lab_results"]
    table = lake.catalog.load_table("bronze.lab_results")
    batch_id = table.snapshots()[-1].summary["medlake.batch"]
    files = lake.ledger.batch_files(batch_id)
    report = load_batch(lake, spec, batch_id, files)
    assert lake.catalog.load_table("bronze.lab_results").metadata.current_snapshot_id == (
        table.metadata.current_snapshot_id
    )
    assert report.records == sum(row.records or 0 for row in files if row.status == "loaded")
    assert report.snapshot_id == table.metadata.current_snapshot_id


def test_gold_written_by_two_writers_at_once_is_never_doubled_nor_failed(tmp_path):
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})
    Lake(settings).catalog  # noqa: B018  namespaces first: the writers race on the table only
    path = tmp_path / "raced.sql"
    path.write_text("-- description: test\n-- schedule: on_update\nSELECT 1 AS n FROM silver.lab_results\n")
    report = load_report(path)
    rows = pa.table({"n": pa.array(range(100), pa.int64())})
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def writer() -> None:
        catalog = Lake(settings).catalog  # a connection and Table objects of its own, as a run process has
        barrier.wait()
        for _ in range(4):
            try:
                write_gold(catalog, report, rows)
            except BaseException as error:
                errors.append(error)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(table_rows(Lake(settings), report.identifier).column("n").to_pylist()) == list(range(100))
