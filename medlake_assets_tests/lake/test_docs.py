"""Iceberg column docs from the metadata's descriptions: set when a table is made, updated on an
existing table when a description changes, by the same function the SQL endpoint's pg_description uses."""

from __future__ import annotations

import pyarrow as pa

from medlake_assets.ingest.bronze import bronze_table, quarantine_table
from medlake_assets.lake.docs import apply_column_docs, refresh_docs
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec import load_sources
from medlake_assets.spec.descriptions import describe_lake
from medlake_assets_tests.lake_helpers import local_settings, open_lake


def test_docs_are_set_at_creation_and_updated_on_existing_tables(tmp_path):
    lake = open_lake(local_settings(tmp_path / "home"))
    spec = load_sources(lake.settings.sources_dir)["lab_results"]
    bronze = bronze_table(lake.catalog, spec)
    assert bronze.schema().find_field("test_code").doc == "LOINC code"
    assert bronze.schema().find_field("_archive").doc.startswith("Landing object key")
    assert quarantine_table(lake.catalog, spec).schema().find_field("_facility").doc.startswith("Facility")
    described = describe_lake({"lab_results": spec})["silver.lab_results"]
    schema = pa.schema([("test_code", pa.string()), ("value", pa.string())])
    silver = ensure_table(lake.catalog, "silver.lab_results", schema, [], docs=described.columns)
    assert silver.schema().find_field("test_code").doc == "LOINC code"
    # A description edited in the YAML reaches the existing table, docs only (no new snapshot).
    snapshots = len(silver.metadata.snapshots)
    assert apply_column_docs(
        silver, {"test_code": "LOINC test code", "value": described.columns["value"]}
    ) == ["test_code"]
    silver = lake.catalog.load_table("silver.lab_results")
    assert silver.schema().find_field("test_code").doc == "LOINC test code"
    assert len(silver.metadata.snapshots) == snapshots
    # and refresh_docs (medlake maintain) puts the metadata's text back on every table
    changed = refresh_docs(lake)
    assert changed["silver.lab_results"] == ["test_code"]
    assert lake.catalog.load_table("silver.lab_results").schema().find_field("test_code").doc == "LOINC code"
    assert refresh_docs(lake) == {}
