"""Fault: two workers given the same batch at the same time."""

from __future__ import annotations

import json
import subprocess
import sys

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import apply_partition_requests
from medlake_assets_tests.faults.harness import assert_equals_clean_run, log_tail, run_ingest, wait_until


def claim_batches(faulted) -> list[str]:
    """One tick of the landing sensors on the lake's Dagster instance (which also creates its storage
    before the workers share it): registers and claims the landed files, runs nothing."""
    defs = build_definitions(faulted.settings)
    with dg.DagsterInstance.from_config(faulted.env["DAGSTER_HOME"]) as instance:
        for sensor in defs.get_repository_def().sensor_defs:
            if sensor.name.startswith("landing"):
                result = sensor(
                    dg.build_sensor_context(instance=instance, definitions=defs, resources=defs.resources)
                )
                apply_partition_requests(instance, result)
    lake = faulted.lake()
    return [batch.batch_id for source in lake.sources for batch in lake.ledger.unfinished_batches(source)]


@pytest.mark.e2e
@pytest.mark.faults
def test_two_workers_executing_the_same_batches_at_once_double_nothing(make_lake, fault_feeds, clean_run):
    """Killed: nothing; the fault is a duplicate delivery: two worker processes (as two run pods would be)
    execute the bronze runs of the same ledger batches, released at the same instant. Whatever order their
    commits land in, no row is doubled, and after `ingest --once` finishes silver the lake equals a clean
    run."""
    faulted = make_lake("same-batch")
    lake = faulted.lake()
    fault_feeds.land(lake.store)
    batches = claim_batches(faulted)
    assert len(batches) >= 4

    barrier = faulted.home / "barrier"
    barrier.mkdir()
    command = [
        sys.executable,
        "-m",
        "medlake_assets_tests.faults.worker",
        "--barrier",
        str(barrier),
        *batches,
    ]
    # Output to files, not pipes: a worker blocked on a full pipe while holding a batch would stall both.
    logs = [faulted.home / f"worker-{number}.log" for number in (1, 2)]
    workers = [
        subprocess.Popen(command, env=faulted.env, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        for log in logs
    ]
    assert wait_until(lambda: len(list(barrier.glob("ready-*"))) == 2, timeout=120), "workers did not start"
    (barrier / "go").touch()
    outcomes = []
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=240) == 0, log_tail(log)
        outcomes.append([json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")])
    assert [[o["batch"] for o in outcome] for outcome in outcomes] == [batches, batches]

    # Both finish every run: the second to reach a batch waits for the first, then replaces its rows.
    assert all(outcome["success"] for worker in outcomes for outcome in worker), outcomes

    assert run_ingest(faulted.env, faulted.log) == 0, log_tail(faulted.log)
    assert_equals_clean_run(lake, clean_run)
