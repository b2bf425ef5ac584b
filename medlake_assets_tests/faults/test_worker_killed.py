"""Fault: a run worker killed with SIGKILL in the middle of a batch."""

from __future__ import annotations

import dagster as dg
import pytest

from medlake_assets.defs.bronze import BATCH_TAG
from medlake_assets_tests.faults.harness import (
    assert_equals_clean_run,
    files_done,
    kill,
    log_tail,
    pending_batches,
    run_ingest,
    start_ingest,
    wait_until,
)


def bronze_runs_in_progress(instance: dg.DagsterInstance) -> int:
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return sum(any(key.startswith(BATCH_TAG) for key in run.tags) for run in runs)


@pytest.mark.e2e
@pytest.mark.faults
def test_run_worker_sigkilled_mid_batch_then_next_ingest_equals_clean_run(make_lake, fault_feeds, clean_run):
    """Killed: the `medlake ingest --once` process executing the runs (the run worker), with SIGKILL, while
    a bronze batch run is in progress and after earlier batches were loaded. The next `ingest --once` marks
    the dead run failed, re-runs its batch (replacing any rows it had committed), and the lake equals a
    clean run."""
    faulted = make_lake("killed")
    lake = faulted.lake()
    fault_feeds.land(lake.store)
    process = start_ingest(faulted.env, faulted.log)
    with dg.DagsterInstance.from_config(faulted.env["DAGSTER_HOME"]) as instance:
        mid_batch = wait_until(
            lambda: files_done(faulted.ledger_url) >= 4 and bronze_runs_in_progress(instance) == 1,
            timeout=120,
            process=process,
        )
        assert mid_batch, f"ingest ended before it could be killed mid-batch:\n{log_tail(faulted.log)}"
        kill(process)
        # The killed run never finished: Dagster still shows it started, its batch is still pending.
        assert bronze_runs_in_progress(instance) == 1
    assert pending_batches(faulted.ledger_url) >= 1

    assert run_ingest(faulted.env, faulted.log) == 0, log_tail(faulted.log)
    assert_equals_clean_run(lake, clean_run)
