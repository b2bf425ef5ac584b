"""Fault: two `medlake ingest --once` at once on one production-shaped lake (PostgreSQL + S3)."""

from __future__ import annotations

import dagster as dg
import pytest

from medlake_assets_tests.accounting import accounting_problems
from medlake_assets_tests.defs.test_concurrent_ingest import (
    assert_each_run_once,
    assert_no_duplicates,
    run_two_ingests,
)
from medlake_assets_tests.defs.test_ingest import assert_lake_matches_manifest


@pytest.mark.e2e
@pytest.mark.faults
def test_two_ingest_once_processes_on_postgres_and_s3(make_lake, fault_feeds):
    """The same on the production shape: catalog and ledger on PostgreSQL, landing and tables on S3."""
    lake_under_test = make_lake("two-ingests")
    lake = lake_under_test.lake()
    fault_feeds.land(lake.store)
    logs = run_two_ingests(lake_under_test.env, lake_under_test.home)
    for log in logs:
        assert "CommitFailedException" not in log and "Traceback" not in log
    with dg.DagsterInstance.from_config(lake_under_test.env["DAGSTER_HOME"]) as instance:
        assert_each_run_once(instance)
    assert_lake_matches_manifest(lake, fault_feeds.manifest)
    assert accounting_problems(lake) == []
    assert_no_duplicates(lake)
