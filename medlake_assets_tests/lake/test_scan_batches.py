"""Scans read one data file ahead of the caller: every matching row once, in file order, whether the caller
reads to the end or stops early, and a failed read raised to the caller after the rows before it."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.expressions import GreaterThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan

from medlake_assets.lake import Lake
from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.files import scan_batches
from medlake_assets.lake.settings import load_settings

SCHEMA = pa.schema([("key", pa.int64()), ("note", pa.string())])
FILES = 5


def _table(tmp_path: Path):
    """A table of FILES data files of 100 keys each, appended in key order."""
    catalog = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})).catalog
    table = ensure_table(catalog, "silver.scanned", SCHEMA, [], {})
    for start in range(0, FILES * 100, 100):
        keys = list(range(start, start + 100))
        table.append(pa.table({"key": keys, "note": [f"n{key}" for key in keys]}, SCHEMA))
    return table.refresh()


def _keys(batches) -> list[int]:
    return [key for batch in batches for key in batch.column("key").to_pylist()]


def test_a_scan_gives_every_matching_row_once_file_by_file(tmp_path: Path) -> None:
    table = _table(tmp_path)
    planned = [task.file.record_count for task in table.scan().plan_files()]
    assert planned == [100] * FILES  # several files, so reading ahead has something to do
    assert sorted(_keys(scan_batches(table))) == list(range(FILES * 100))
    assert sorted(_keys(scan_batches(table, GreaterThanOrEqual("key", 250), ["key"]))) == list(
        range(250, 500)
    )
    # In the order the scan plans the files, each file's rows together: as pyiceberg reads them one by one.
    scan = table.scan()
    reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
    one_by_one = [_keys(reader.to_record_batches([task])) for task in scan.plan_files()]
    assert _keys(scan_batches(table)) == [key for keys in one_by_one for key in keys]


def test_the_next_file_is_read_before_the_caller_asks_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path)
    real = ArrowScan.to_record_batches
    second_read = threading.Event()
    calls = []

    def counted(self, tasks):
        calls.append(1)
        if len(calls) == 2:
            second_read.set()
        return real(self, tasks)

    monkeypatch.setattr(ArrowScan, "to_record_batches", counted)
    batches = scan_batches(table)
    first = next(batches)
    assert first.num_rows == 100
    # The caller holds the first file's rows and asks for nothing more: the second file is being read.
    assert second_read.wait(timeout=30)
    assert sorted(_keys([first, *batches])) == list(range(FILES * 100))
    assert len(calls) == FILES


def test_a_caller_that_stops_early_leaves_the_next_scan_whole(tmp_path: Path) -> None:
    table = _table(tmp_path)
    batches = scan_batches(table)
    first = next(batches)
    assert first.num_rows == 100
    batches.close()  # the file read ahead is not wanted
    assert sorted(_keys(scan_batches(table))) == list(range(FILES * 100))


def test_a_failed_read_reaches_the_caller_after_the_rows_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path)
    real = ArrowScan.to_record_batches
    calls = []

    def third_fails(self, tasks):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("connection reset")
        return real(self, tasks)

    monkeypatch.setattr(ArrowScan, "to_record_batches", third_fails)
    received = []
    with pytest.raises(OSError, match="connection reset"):
        for batch in scan_batches(table):
            received.append(batch.num_rows)
    assert received == [100, 100]
