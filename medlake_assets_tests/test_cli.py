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
