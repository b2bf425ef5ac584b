"""`medlake bench ingest` on a few small generated archives: the pipeline's time is split by layer from
the runs' own event log, so the bronze ratio stays comparable with the one measured before silver joined
the landing flow's runs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from rich.console import Console

from medlake_dev.bench.ingest import run_ingest_benchmark, seconds_per_layer
from medlake_dev.bench.soak import run_profiles


def test_step_seconds_are_summed_per_layer_from_the_event_log() -> None:
    @dg.asset(key=["bronze", "a"])
    def bronze_a() -> int:
        return 1

    @dg.asset(key=["bronze", "b"])
    def bronze_b() -> int:
        return 2

    @dg.asset(key=["silver", "a"], deps=[bronze_a, bronze_b])
    def silver_a() -> None:
        return None

    @dg.asset
    def freshness_checks() -> None:
        return None

    with dg.instance_for_test() as instance:
        assert dg.materialize([bronze_a, bronze_b, silver_a, freshness_checks], instance=instance).success
        profiles = run_profiles(instance)
        steps = profiles[0]["steps"]
        assert sorted(steps) == ["bronze__a", "bronze__b", "freshness_checks", "silver__a"]
        layers = seconds_per_layer(profiles + profiles)  # two runs' steps add up
    assert sorted(layers) == ["bronze", "freshness_checks", "silver"]
    assert layers["bronze"] == pytest.approx(2 * (steps["bronze__a"] + steps["bronze__b"]))
    assert layers["silver"] == pytest.approx(2 * steps["silver__a"])


def test_bench_ingest_reports_the_bronze_share_of_a_pipeline_that_reaches_silver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD", "bench-ingest-test-secret")
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", "1")
    outcome = run_ingest_benchmark(
        archives=6, facilities=3, seed=11, size_scale=0.01, work_dir=tmp_path, console=Console(quiet=True)
    )
    assert outcome.archives == 6 and outcome.records > 0
    assert {"bronze", "silver"} <= set(outcome.step_seconds)
    assert 0 < outcome.step_seconds["bronze"] < outcome.pipeline_seconds
    assert outcome.bronze_ratio == pytest.approx(outcome.step_seconds["bronze"] / outcome.floor_seconds)
    console = Console(record=True, width=200)
    console.print(outcome)
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in console.export_text().splitlines()
        if line.count("│") == 3
    }
    assert rows["of which bronze steps (summed over the runs)"] == f"{outcome.step_seconds['bronze']:.2f} s"
    assert rows["ratio bronze steps / floor (1 process): the ratio before silver joined the runs"] == (
        f"{outcome.bronze_ratio:.2f}"
    )
