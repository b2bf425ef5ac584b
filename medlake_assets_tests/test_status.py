"""`medlake status` and the data_quality_scorecard on a real lake: per source what is pending, loading,
held back, quarantined, which facilities are stale and the last error, with no record values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
from typer.testing import CliRunner

from medlake_assets.cli import app
from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.ingest.bronze import quarantine_table
from medlake_assets.lake.ledger import LandedFile
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets_tests.defs.test_silver_gate import lab_row, land_lab
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake, time_passes
from medlake_dev.generate import write_feeds


def status_lines(output: str, source: str) -> list[str]:
    """The cells of the status table's row for `source` (a row may wrap onto following lines)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"│ {source} "))
    row = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("│ ") or line.split("│")[1].strip():
            break
        row.append(line)
    cells = [
        " ".join(part.strip() for part in column)
        for column in zip(*[r.split("│")[1:-1] for r in row], strict=False)
    ]
    return [" ".join(cell.split()) for cell in cells]


def test_status_and_scorecard_show_held_quarantined_pending_and_stale(tmp_path, archive_password):
    home = tmp_path / "home"
    # Within the freshness lookback whatever today is (a fixed day falls out of it two weeks later).
    day = datetime.now(UTC).date() - timedelta(days=1)
    land_lab(home, "F1", "f1", [lab_row("F1", f"A{n}", bad=n % 4 == 0) for n in range(40)], day)
    land_lab(home, "F2", "f2", [lab_row("F2", f"B{n}") for n in range(40)], day)
    LocalObjectStore(home).put(f"landing/lab_results/{day:%Y/%m/%d}/F3/broken.csv.gz", b"\x1f\x8b not gzip")
    settings = local_settings(home)
    lake = open_lake(settings)
    env = {"MEDLAKE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "COLUMNS": "200"}
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(settings), instance, lake).failed_runs == 0
    # Three hours without anything from F2; a new F1 file registered but not yet claimed by a batch.
    time_passes(lake, 180, facility="F2")
    key = f"landing/lab_results/{day:%Y/%m/%d}/F1/late.csv.gz"
    lake.ledger.register([LandedFile(lake.store.uri, key, "e1", 10, "lab_results", "F1", day)])

    shown = CliRunner().invoke(app, ["status"], env=env)
    assert shown.exit_code == 0, shown.output
    (
        source,
        pending,
        loading,
        to_silver,
        held,
        quarantined,
        stale,
        last_error,
    ) = status_lines(shown.output, "lab_results")
    assert (source, pending, loading, to_silver) == ("lab_results", "1", "0", "0")
    assert held == "F1: 30 rows (1 batch)"
    assert quarantined == "1 archive (archive.corrupt 1), 10 rows (check.regex:test_code 10)"
    assert stale.startswith("F2 (")
    assert "archive.corrupt" in last_error
    assert "NOT-A-LOINC" not in shown.output
    assert status_lines(shown.output, "bed_census")[6] == "no data yet"
    assert "medlake release --source lab_results --facility F1" in shown.output

    # The scorecard reads every source's quarantine table; the sources that received nothing have none yet.
    for spec in lake.sources.values():
        quarantine_table(lake.catalog, spec)
    report = CliRunner().invoke(app, ["report", "data_quality_scorecard"], env=env)
    assert report.exit_code == 0, report.output
    rows = {
        row[0]: row[1:]
        for row in connect(lake)
        .execute(
            "SELECT facility, archives_pending, held_rows, held_batches, stale, last_error_rule "
            "FROM gold.data_quality_scorecard WHERE source = 'lab_results' ORDER BY facility"
        )
        .fetchall()
    }
    assert rows == {
        "F1": (1, 30, 1, False, None),
        "F2": (0, 0, 0, True, None),
        "F3": (0, 0, 0, False, "archive.corrupt"),
    }
    sql = (
        "SELECT held_since FROM gold.data_quality_scorecard WHERE facility = 'F1' AND source = 'lab_results'"
    )
    (held_since,) = connect(lake).execute(sql).fetchone()
    assert held_since <= datetime.now(UTC)


def test_the_demo_names_the_faults_it_planted(tmp_path, archive_password):
    """`make run` plants bad archives (`--bad-rate`): the bronze `quarantine_rate` checks warn and name the
    planted rules and facilities, silver publishes every facility (one bad row in a large file is not a
    reason to hold one back), and `medlake status` names every planted fault per source."""
    home = tmp_path / "home"
    manifest = write_feeds(home, facilities=4, archives=30, seed=3, bad_rate=0.15, day=DAY, size_scale=0.02)
    planted = manifest["bad_files"]
    assert {(b["source"], b["rule"]) for b in planted} == {
        (None, "landing.no_source"),
        ("adt_events", "cast.timestamp"),
        ("adt_events", "archive.corrupt"),
        ("bed_census", "archive.bad_password"),
    }
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(settings), instance, lake).failed_runs == 0
        for source in ("adt_events", "bed_census"):
            mine = [b for b in planted if b["source"] == source and b["stage"] == "bronze"]
            key = dg.AssetCheckKey(dg.AssetKey(["bronze", source]), "quarantine_rate")
            evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[
                key
            ].evaluation
            assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
            assert json.loads(evaluation.metadata["top_rules"].value) == {b["rule"]: 1 for b in mine}
            facilities = sorted(b["key"].split("/")[5] for b in mine)
            assert json.loads(evaluation.metadata["quarantined_facilities"].value) == facilities
        for source in lake.sources:
            key = dg.AssetCheckKey(dg.AssetKey(["silver", source]), "quality_gate")
            evaluation = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[
                key
            ].evaluation
            assert evaluation.passed is True and evaluation.metadata["held_facilities"].value == {}

    env = {"MEDLAKE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    shown = CliRunner().invoke(app, ["status"], env=env)
    assert shown.exit_code == 0, shown.output
    assert status_lines(shown.output, "adt_events")[4:6] == [
        "none",
        "1 archive (archive.corrupt 1), 1 row (cast.timestamp 1)",
    ]
    assert status_lines(shown.output, "bed_census")[5] == "1 archive (archive.bad_password 1), 0 rows"
    assert status_lines(shown.output, "(no source)")[5] == "1 archive (landing.no_source 1), 0 rows"
