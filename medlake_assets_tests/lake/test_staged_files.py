"""Staged data files written in the background (bronze's writer): the same files and rows as written in
the foreground, and a failed write raised before any commit, with what was written deleted on discard."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.expressions import AlwaysFalse
from pyiceberg.transforms import IdentityTransform

from medlake_assets.lake import Lake, files
from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.files import StagedFiles, commit_files
from medlake_assets.lake.settings import load_settings

SCHEMA = pa.schema([("key", pa.int64()), ("part", pa.string())])


def _table(tmp_path: Path, name: str):
    catalog = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})).catalog
    return ensure_table(catalog, f"silver.{name}", SCHEMA, [("part", IdentityTransform(), "part")], {})


def _chunk(start: int) -> pa.Table:
    return pa.table({"key": list(range(start, start + 100)), "part": ["a"] * 100}, SCHEMA)


@pytest.mark.parametrize("in_background", [False, True])
def test_staged_chunks_commit_every_row_once_in_the_background_as_in_the_foreground(
    tmp_path: Path, in_background: bool
) -> None:
    table = _table(tmp_path, "staged")
    staged = StagedFiles(table, in_background=in_background)
    for start in (0, 100, 200):
        staged.write(_chunk(start))
    assert len(staged.files) == 3 and staged.rows == 300
    commit_files(table, staged.files, AlwaysFalse(), {})
    keys = table.refresh().scan().to_arrow().column("key").to_pylist()
    assert sorted(keys) == list(range(300))


def test_a_failed_background_write_is_raised_before_the_commit_and_discard_deletes_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = _table(tmp_path, "failing")
    real = files._dataframe_to_data_files
    calls = []

    def second_fails(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(**kwargs)

    monkeypatch.setattr(files, "_dataframe_to_data_files", second_fails)
    staged = StagedFiles(table, in_background=True)
    staged.write(_chunk(0))
    staged.write(_chunk(100))  # fails on the writer's thread
    with pytest.raises(OSError, match="disk full"):
        staged.files  # noqa: B018 - what a commit reads first
    written = [Path(data_file.file_path.removeprefix("file://")) for data_file in staged.files]
    assert len(written) == 1 and written[0].exists()
    staged.discard()
    assert not written[0].exists() and staged.files == []
