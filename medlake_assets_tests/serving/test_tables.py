"""`tables()`: rows, snapshots, last update and size per table; `parse_as_of` forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.compute as pc
import pytest

from medlake_assets.serving.catalog_info import AsOfError, TableInfo, parse_as_of, tables
from medlake_assets_tests.serving.serving_lake import EMPTY, LABS, LATE, build_serving_lake


def _on_disk_bytes(lake, name: str) -> tuple[int, int]:
    """(data files, their bytes) of the table's current snapshot, measured on disk."""
    files = lake.catalog.load_table(name).inspect.files()
    paths = [path.removeprefix("file://") for path in files.column("file_path").to_pylist()]
    return len(paths), sum(Path(path).stat().st_size for path in paths)


def test_tables_lists_rows_snapshots_last_update_and_size(tmp_path):
    serving = build_serving_lake(tmp_path / "home")
    lake = serving.lake
    labs = lake.catalog.load_table(LABS)
    late = lake.catalog.load_table(LATE)
    labs_files, labs_bytes = _on_disk_bytes(lake, LABS)
    late_files, late_bytes = _on_disk_bytes(lake, LATE)
    assert labs_bytes == int(pc.sum(labs.inspect.files().column("file_size_in_bytes")).as_py())
    assert tables(lake) == [
        TableInfo(
            name=LATE,
            rows=5,
            snapshots=1,
            last_updated=datetime.fromtimestamp(late.current_snapshot().timestamp_ms / 1000, UTC),
            size_bytes=late_bytes,
            data_files=late_files,
        ),
        TableInfo(name=EMPTY, rows=0, snapshots=0, last_updated=None, size_bytes=0, data_files=0),
        TableInfo(
            name=LABS,
            rows=len(serving.current_rows),
            snapshots=3,  # append, then the overwrite's delete and append
            last_updated=datetime.fromtimestamp(labs.current_snapshot().timestamp_ms / 1000, UTC),
            size_bytes=labs_bytes,
            data_files=labs_files,
        ),
    ]
    assert labs_files == 3  # one file per facility partition


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4311913874745866236, 4311913874745866236),
        (" 4311913874745866236 ", 4311913874745866236),
        ("2026-11-20T08:30:00Z", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T08:30:00", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        (
            "2026-11-20T09:30:00+01:00",
            datetime(2026, 11, 20, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
        (datetime(2026, 11, 20, 8, 30), datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
    ],
)
def test_parse_as_of(value, expected):
    parsed = parse_as_of(value)
    assert parsed == expected
    assert type(parsed) is type(expected)


def test_parse_as_of_refuses_other_text():
    with pytest.raises(AsOfError, match=r"as_of 'last tuesday' is neither a snapshot id nor an ISO"):
        parse_as_of("last tuesday")
