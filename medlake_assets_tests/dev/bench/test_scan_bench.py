"""`medlake bench scan` times landing-sensor scans of real objects on an S3 endpoint, once registered."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlake_dev.bench.scan import run_scan_benchmark


def test_bench_scan_registers_each_count_then_times_scans_that_find_nothing_new(
    tmp_path: Path, s3_endpoint: str
) -> None:
    outcome = run_scan_benchmark([30, 90], repeats=2, work_dir=tmp_path)

    assert [(scan.objects, scan.registered, scan.listed_new) for scan in outcome.scans] == [
        (30, 30, 0),
        (90, 60, 0),
    ]
    assert all(scan.wall_seconds > 0 and scan.sensor_cpu_seconds > 0 for scan in outcome.scans)
    assert all(scan.s3_cpu_seconds is None for scan in outcome.scans)  # the tests' endpoint, not the bench's
    assert outcome.ledger == "SQLite"
    assert "objects in the open days" in str(outcome.__rich__().columns[0].header)


def test_bench_scan_reads_the_cpu_of_the_s3_server_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEDLAKE_S3_ENDPOINT_URL", raising=False)  # the bench starts moto's server itself
    [scan] = run_scan_benchmark([20], repeats=1, work_dir=tmp_path).scans

    assert (scan.objects, scan.registered, scan.listed_new) == (20, 20, 0)
    assert scan.s3_cpu_seconds is not None and scan.s3_cpu_seconds > 0  # it answered the listing
