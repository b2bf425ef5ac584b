"""Fault: PostgreSQL (Iceberg catalog and ledger) restarted during a run."""

from __future__ import annotations

import pytest

from medlake_assets_tests.faults.harness import (
    assert_equals_clean_run,
    fault_during_ingest,
    log_tail,
    run_ingest,
)
from medlake_assets_tests.faults.servers import PrivatePostgres, postgres_bin


@pytest.mark.e2e
@pytest.mark.faults
def test_postgres_restarted_mid_run_then_rerun_equals_clean_run(make_lake, fault_feeds, clean_run):
    """Killed: the PostgreSQL server holding the Iceberg catalog and the ledger, restarted with
    `pg_ctl restart -m fast` (every session terminated) in the middle of a run, on a cluster of the test's
    own. The run in flight fails or its next statement reconnects; the next `ingest --once` makes the lake
    equal a clean run."""
    assert postgres_bin() is not None, "the PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    server = PrivatePostgres()
    try:
        faulted = make_lake("pg-restart", catalog_server=server.url)
        lake = faulted.lake()
        fault_feeds.land(lake.store)
        first = fault_during_ingest(faulted.env, faulted.log, server.restart)
        assert first in (0, 1), log_tail(faulted.log)
        lake.ledger.close()  # the test's own pooled connections died with the restart too
        assert run_ingest(faulted.env, faulted.log) == 0, log_tail(faulted.log)
        assert_equals_clean_run(lake, clean_run)
    finally:
        server.close()
