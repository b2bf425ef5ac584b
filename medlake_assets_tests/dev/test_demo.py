"""The first look (`make run` = `medlake demo`): the real Dagster UI's GraphQL shows runs under their jobs
and landing-day partitions filled, after the daemon's landing sensor ingested a generated lake."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medlake_assets.defs.gold import report_job_name, report_run_tags
from medlake_assets.gold import load_reports
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings
from medlake_assets_tests.lake_helpers import DAY
from medlake_dev.cli import PLANTED, planted_faults
from medlake_dev.demo import LOCATION, REPOSITORY, DagsterDev, wait_until_ingested
from medlake_dev.generate import write_feeds
from medlake_dev.workers import free_port

ROOT = Path(__file__).resolve().parents[2]

JOB_RUNS = """
query ($job: String!, $repository: String!, $location: String!) {
  pipelineOrError(
    params: {pipelineName: $job, repositoryName: $repository, repositoryLocationName: $location}
  ) {
    ... on Pipeline { runs { id status repositoryOrigin { repositoryLocationName } } }
  }
}
"""
PARTITIONS = """
query ($path: [String!]!) {
  assetNodeOrError(assetKey: {path: $path}) {
    ... on AssetNode { partitionKeys partitionStats { numMaterialized numPartitions numFailed } }
  }
}
"""


@pytest.mark.e2e
def test_dagster_ui_shows_runs_under_jobs_and_filled_landing_days(tmp_path, monkeypatch, archive_password):
    home = tmp_path / "home"
    # Today: the daemon's landing sensor lists the open landing days.
    manifest = write_feeds(
        home, facilities=3, archives=24, seed=42, size_scale=0.05, day=datetime.now(UTC).date()
    )
    assert all(counts["archives"] for counts in manifest["sources"].values())  # every report has input
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "dagster.embedded.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("MEDLAKE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    settings = load_settings()
    lake = Lake(settings)
    with DagsterDev(settings, port=free_port()) as dev:
        dev.wait_until_serving()
        state = wait_until_ingested(lake, dev, timeout=600)
        assert state.settled and state.done == len(manifest["archives"])
        report = next(r for r in load_reports(settings.reports_dir) if r.name == "data_quality_scorecard")
        run_id = dev.submit(report_job_name(report), report_run_tags(report))
        assert dev.wait_for_run(run_id) == "SUCCESS"

        variables = {"repository": REPOSITORY, "location": LOCATION}
        ingest = dev.graphql(JOB_RUNS, {**variables, "job": "ingest_landed"})["pipelineOrError"]["runs"]
        assert ingest and all(run["status"] == "SUCCESS" for run in ingest)
        assert {run["repositoryOrigin"]["repositoryLocationName"] for run in ingest} == {LOCATION}
        scorecard = dev.graphql(JOB_RUNS, {**variables, "job": report_job_name(report)})
        assert [run["id"] for run in scorecard["pipelineOrError"]["runs"]] == [run_id]

        day = manifest["day"]
        for path in (["bronze", "lab_results"], ["silver", "lab_results"], ["silver", "encounters"]):
            node = dev.graphql(PARTITIONS, {"path": path})["assetNodeOrError"]
            assert node["partitionKeys"] == [day], path
            assert node["partitionStats"] == {"numMaterialized": 1, "numPartitions": 1, "numFailed": 0}, path


def test_the_demo_names_the_faults_the_generator_planted(tmp_path, archive_password):
    generation = {"facilities": 2, "archives": 24, "seed": 3, "bad_rate": 0.3, "size_scale": 0.01}
    manifest = write_feeds(tmp_path, day=DAY, **generation)
    sources = manifest["sources"].values()
    planted = {key: sum(counts[key] for counts in sources) for key in PLANTED}
    assert planted["archives_quarantined"] > 0  # the seed plants bad archives
    text = planted_faults(manifest)
    assert f"{planted['archives_quarantined']} archives meant for quarantine" in text
    assert f"{planted['rejected_records']} records meant to be rejected in bronze" in text
    assert f"{planted['silver_rejected_records']} in silver" in text
