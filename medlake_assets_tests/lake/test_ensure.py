"""Ensuring a table that exists writes nothing: every layer (bronze, quarantine, silver, gold) goes through
one function that loads first and creates only when the table is missing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog import Catalog

from medlake_assets.gold.run import write_gold
from medlake_assets.gold.spec import load_report
from medlake_assets.ingest.bronze import bronze_table, quarantine_table
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings
from medlake_assets.silver.tables import ensure_table


def metadata_files(catalog: Catalog, identifier: str) -> list[Path]:
    location = catalog.load_table(identifier).location().removeprefix("file://")
    return sorted((Path(location) / "metadata").glob("*.metadata.json"))


def test_repeated_ensures_of_every_layer_write_one_metadata_file(tmp_path, sources) -> None:
    lake = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")}))
    catalog, spec = lake.catalog, sources["lab_results"]
    rows = pa.table({"facility_id": ["F1"], "n": [1]})
    for _ in range(4):
        bronze_table(catalog, spec)
        quarantine_table(catalog, spec)
        ensure_table(catalog, "silver.ensured", rows.schema, ["facility_id"])
    for identifier in ("bronze.lab_results", "quarantine.lab_results", "silver.ensured"):
        assert len(metadata_files(catalog, identifier)) == 1, identifier


def test_concurrent_first_ensures_create_one_table(tmp_path, sources) -> None:
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})
    assert Lake(settings).catalog.list_tables("bronze") == []  # namespaces first: racers race on the table

    def ensure(_: int) -> str:
        return bronze_table(Lake(settings).catalog, sources["bed_census"]).metadata.table_uuid.hex

    with ThreadPoolExecutor(4) as pool:
        uuids = set(pool.map(ensure, range(8)))
    assert len(uuids) == 1


def test_gold_rewrites_add_a_metadata_file_per_commit_only(tmp_path) -> None:
    lake = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")}))
    path = tmp_path / "ensured.sql"
    path.write_text("-- description: test\n-- schedule: on_update\nSELECT 1 AS n FROM silver.lab_results\n")
    report = load_report(path)
    rows = pa.table({"n": pa.array([1], pa.int32())})
    for _ in range(3):
        write_gold(lake.catalog, report, rows)
    # create + first append + two overwrites: one metadata file per commit, none for the ensures
    assert len(metadata_files(lake.catalog, report.identifier)) == 4
