"""Fault: the S3 endpoint stopped and restarted during a run."""

from __future__ import annotations

import time

import pytest

from medlake_assets_tests.faults.harness import (
    assert_equals_clean_run,
    fault_during_ingest,
    log_tail,
    run_ingest,
)
from medlake_assets_tests.faults.servers import MotoServer, TcpProxy

OUTAGE_SECONDS = 5


@pytest.mark.e2e
@pytest.mark.faults
def test_s3_endpoint_stopped_and_restarted_mid_run_then_rerun_equals_clean_run(
    tmp_path, make_lake, fault_feeds, clean_run
):
    """Killed: the S3 endpoint, for 5 s in the middle of a run: every open connection reset, new ones
    refused, then the endpoint back with the objects it held (moto keeps them in memory, so the test stops a
    TCP proxy in front of its own moto server rather than moto itself). The run fails or retries; after the
    endpoint is back, the next `ingest --once` makes the lake equal a clean run."""
    moto = MotoServer(tmp_path / "moto.log")
    proxy = TcpProxy(moto.port)
    proxy.start()
    try:
        faulted = make_lake("s3-restart", endpoint=proxy.url)
        lake = faulted.lake()
        fault_feeds.land(lake.store)

        def outage() -> None:
            proxy.stop()
            time.sleep(OUTAGE_SECONDS)
            proxy.start()

        first = fault_during_ingest(faulted.env, faulted.log, outage)
        # The clients keep connections open to the endpoint (HTTP/1.1): the outage cut the run's.
        assert proxy.connections_reset >= 1
        assert first in (0, 1), log_tail(faulted.log)

        assert run_ingest(faulted.env, faulted.log) == 0, log_tail(faulted.log)
        assert_equals_clean_run(lake, clean_run)
    finally:
        proxy.stop()
        moto.close()
