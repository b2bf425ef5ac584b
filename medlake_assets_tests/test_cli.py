"""The `medlake` command as a user runs it: generate, ingest --once, sql in three formats."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medlake_assets.cli import app
from medlake_assets_tests.lake_helpers import DAY

runner = CliRunner()


def test_generate_ingest_and_query(tmp_path, monkeypatch, archive_password):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDLAKE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    generated = runner.invoke(
        app,
        [
            "generate",
            "--out",
            str(home),
            "--archives",
            "16",
            "--facilities",
            "2",
            "--seed",
            "4",
            "--day",
            DAY.isoformat(),
            "--size-scale",
            "0.02",
            "--bad-rate",
            "0.2",
        ],
    )
    assert generated.exit_code == 0, generated.output
    manifest = json.loads((home / "manifest.json").read_text())

    ingested = runner.invoke(app, ["ingest", "--once"])
    assert ingested.exit_code == 0, ingested.output
    assert "runs (0 failed)" in ingested.output

    query = "SELECT count(*) AS n FROM bronze.lab_results"
    as_json = runner.invoke(app, ["sql", query, "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout.strip()) == {"n": manifest["sources"]["lab_results"]["records"]}
    as_csv = runner.invoke(
        app, ["sql", "SELECT status, count(*) AS n FROM meta.files GROUP BY 1 ORDER BY 1", "--format", "csv"]
    )
    quarantined = sum(1 for bad in manifest["bad_files"] if bad["expect"] == "quarantined")
    assert f"quarantined,{quarantined}" in as_csv.stdout.splitlines()
    assert runner.invoke(app, ["sql", query]).exit_code == 0
    wrong = runner.invoke(app, ["sql", query, "--format", "xml"])
    assert wrong.exit_code != 0


def test_generate_without_secret_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDLAKE_ARCHIVE_PASSWORD", raising=False)
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--archives", "4"])
    assert result.exit_code == 2
    assert "MEDLAKE_ARCHIVE_PASSWORD" in result.output


def test_sql_time_travel_shell_and_tables(tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from medlake_assets_tests.serving.serving_lake import build_serving_lake

    serving = build_serving_lake(tmp_path / "home")
    monkeypatch.setenv("MEDLAKE_HOME", str(tmp_path / "home"))
    query = "SELECT count(*) AS n FROM silver.lab_results"
    now = runner.invoke(app, ["sql", query, "--format", "json"])
    assert json.loads(now.stdout) == {"n": len(serving.current_rows)}
    by_id = runner.invoke(app, ["sql", query, "--format", "json", "--as-of", str(serving.first_snapshot_id)])
    assert json.loads(by_id.stdout) == {"n": len(serving.first_rows)}
    iso = datetime.fromtimestamp(serving.first_timestamp_ms / 1000, UTC).isoformat()
    by_time = runner.invoke(app, ["sql", query, "--format", "csv", "--as-of", iso])
    assert by_time.stdout.splitlines() == ["n", str(len(serving.first_rows))]
    assert runner.invoke(app, ["sql", query, "--as-of", "soon"]).exit_code == 2
    shell = runner.invoke(
        app,
        ["sql", "--as-of", str(serving.first_snapshot_id)],
        input=".tables\nSELECT count(*) AS n\nFROM silver.lab_results;\n",
    )
    assert shell.exit_code == 0, shell.output
    assert "bronze.late_feed" not in shell.output  # created after that snapshot
    assert f"│ {len(serving.first_rows)} │" in shell.output
    listed = runner.invoke(app, ["tables"])
    assert listed.exit_code == 0, listed.output
    assert "│ silver.lab_results    │   53 │         3 │" in listed.output
