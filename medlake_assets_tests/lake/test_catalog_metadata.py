"""The catalog reads a table's metadata file once per version, not at every load, and still sees every
commit: its own at once, another process's at the next load."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.serializers import FromInputFile
from pyiceberg.types import StringType

from medlake_assets.ingest.bronze import TABLE_PROPERTIES
from medlake_assets.lake import Lake
from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.commits import Transaction
from medlake_assets.lake.settings import load_settings

SCHEMA = pa.schema([("key", pa.int64()), ("round", pa.int64())])
NAME = "silver.versions"


def _rows(round_: int) -> pa.Table:
    return pa.table({"key": [round_ * 10 + n for n in range(3)], "round": [round_] * 3}, SCHEMA)


def _rounds(table) -> list[int]:
    return sorted(table.scan().to_arrow().column("round").to_pylist())


@pytest.fixture
def settings(tmp_path):
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})
    catalog = Lake(settings).catalog
    table = ensure_table(catalog, NAME, SCHEMA, [], TABLE_PROPERTIES)
    table.append(_rows(0))
    return settings


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The metadata files read and parsed, by location, in order."""
    locations: list[str] = []
    parse = FromInputFile.table_metadata

    def counted(input_file, *args, **kwargs):
        locations.append(input_file.location)
        return parse(input_file, *args, **kwargs)

    monkeypatch.setattr(FromInputFile, "table_metadata", staticmethod(counted))
    return locations


def test_loads_of_an_unchanged_table_read_its_metadata_file_once(settings, reads: list[str]) -> None:
    catalog = Lake(settings).catalog  # a new process's catalog
    tables = [catalog.load_table(NAME) for _ in range(5)]
    tables.append(ensure_table(catalog, NAME, SCHEMA, [], TABLE_PROPERTIES))

    assert reads == [tables[0].metadata_location]
    assert {table.metadata_location for table in tables} == {tables[0].metadata_location}
    # Its tables commit through the lake's transaction, whatever pyiceberg method they commit by.
    assert all(type(table.transaction()) is Transaction for table in tables)
    assert all(_rounds(table) == [0, 0, 0] for table in tables)


def test_a_commit_of_another_process_is_read_at_the_next_load(settings, reads: list[str]) -> None:
    mine, theirs = Lake(settings).catalog, Lake(settings).catalog
    before = mine.load_table(NAME)
    theirs.load_table(NAME).append(_rows(1))
    reads.clear()

    after = mine.load_table(NAME)

    assert after.metadata_location != before.metadata_location
    assert reads == [after.metadata_location]  # the new version, read once
    assert _rounds(after) == [0, 0, 0, 1, 1, 1]
    assert after.metadata.current_snapshot_id == theirs.load_table(NAME).metadata.current_snapshot_id


def test_the_loads_after_its_own_commit_read_nothing(settings, reads: list[str]) -> None:
    catalog = Lake(settings).catalog
    table = catalog.load_table(NAME)
    reads.clear()

    table.append(_rows(1))  # pyiceberg's commit loads the current table first: from memory now
    refreshed, loaded = table.refresh(), catalog.load_table(NAME)

    assert reads == []
    assert refreshed.metadata_location == loaded.metadata_location == table.metadata_location
    assert loaded.metadata.current_snapshot_id == table.metadata.current_snapshot_id
    assert _rounds(loaded) == [0, 0, 0, 1, 1, 1]
    # What the catalog kept is what it wrote: a process reading the file finds the same metadata.
    assert Lake(settings).catalog.load_table(NAME).metadata == loaded.metadata


def test_a_refused_commit_leaves_the_other_writers_version(settings) -> None:
    mine, theirs = Lake(settings).catalog, Lake(settings).catalog
    stale = mine.load_table(NAME)
    with theirs.load_table(NAME).update_schema() as update:
        update.add_column("note", StringType())

    with pytest.raises(CommitFailedException), stale.update_schema() as update:
        update.add_column("flag", StringType())  # made against the schema before theirs

    current = mine.load_table(NAME)
    assert current.metadata_location != stale.metadata_location
    assert current.schema().column_names == ["key", "round", "note"]
    assert _rounds(current) == [0, 0, 0]
