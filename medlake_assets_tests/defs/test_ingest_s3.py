"""The same ingest against an S3 endpoint on 127.0.0.1: landing, quarantine and warehouse in a bucket."""

from __future__ import annotations

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.serving.sql import connect
from medlake_assets_tests.defs.test_ingest import GENERATION, assert_lake_matches_manifest
from medlake_assets_tests.lake_helpers import local_settings, open_lake, table_rows
from medlake_dev.generate import generate_feeds


@pytest.mark.s3
def test_ingest_from_s3_matches_manifest(tmp_path, archive_password, s3_endpoint, s3_bucket):
    settings = local_settings(
        tmp_path / "home",
        MEDLAKE_STORE_URL=f"s3://{s3_bucket}/medlake",
        MEDLAKE_S3_ENDPOINT_URL=s3_endpoint,
    )
    assert settings.warehouse == f"s3://{s3_bucket}/medlake/warehouse"
    lake = open_lake(settings)
    manifest = generate_feeds(lake.store.put, **GENERATION)
    with dg.instance_for_test() as instance:
        summary = ingest_once(build_definitions(settings), instance, lake)
    assert summary.failed_runs == 0
    assert_lake_matches_manifest(lake, manifest)
    assert lake.catalog.load_table("bronze.lab_results").metadata_location.startswith(
        f"s3://{s3_bucket}/medlake/"
    )
    con = connect(lake)
    for source, expected in manifest["sources"].items():
        assert con.execute(f"SELECT count(*) FROM bronze.{source}").fetchone()[0] == expected["records"]
        assert table_rows(lake, f"bronze.{source}").num_rows == expected["records"]
