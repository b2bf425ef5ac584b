"""`medlake bench manifests` compares tables that took the same commits: the same rows, merged or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlake_dev.bench.manifests import run_manifest_benchmark


def test_bench_manifests_compares_the_same_commits_merged_and_not(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLAKE_S3_ENDPOINT_URL", s3_endpoint)
    outcome = run_manifest_benchmark(runs=18, every=9, rows_per_run=50, work_dir=tmp_path)

    assert [point.runs for point in outcome.checkpoints] == [9, 18]
    last = outcome.checkpoints[-1]
    assert last.rows["bronze unmerged"] == last.rows["bronze merged"] == 18 * 50
    assert last.rows["silver unmerged"] == last.rows["silver merged"] == 200  # one row per key, replaced
    assert last.manifests["bronze unmerged"] == 18  # one per append
    assert last.manifests["bronze merged"] < 16
    assert last.manifests["silver merged"] < last.manifests["silver unmerged"]
    assert "plan ratio" in str(outcome.__rich__().columns[4].header)
