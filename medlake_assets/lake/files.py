"""Iceberg reads and writes in bounded memory: a scan read one data file at a time, and data files written
chunk by chunk ahead of the single commit that publishes them all.

pyiceberg's `scan().to_arrow()` holds the whole result, and its batch reader hands every planned file to its
thread pool at once (each file read whole), so reading a day of a table held the day. `scan_batches` reads
the planned files one after another, one ahead: at most two data files' rows are in memory.

`StagedFiles` writes a chunk's rows as Parquet data files of the table as soon as the chunk is ready
(pyiceberg's own writer, one or more files per partition), so a run holds one chunk, not the whole batch.
`commit_files` then publishes every staged file in one transaction, as `Table.overwrite` does: a filtered
delete of the rows they replace (whole files dropped, partly matching files rewritten without those rows),
then one append snapshot of the staged files. Readers see all of it or none of it. A commit that conflicts
lands nothing (pyiceberg raises `ValidationException` or `CommitFailedException`): the staged files stay
valid for a retry when their rows do not depend on the table's state (bronze, quarantine), and are
`discard`ed when they do (a merge is read and done again).
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysFalse, AlwaysTrue, BooleanExpression
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table

from medlake_assets.lake.commits import CONFLICTS, REDO_ATTEMPTS, wait_before_redo
from medlake_assets.lake.manifests import merging_overwrite

ALL_ROWS = AlwaysTrue()
_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlake-scan-ahead")


def scan_batches(
    table: Table, row_filter: BooleanExpression = ALL_ROWS, selected_fields: Sequence[str] = ("*",)
) -> Iterator[pa.RecordBatch]:
    """The rows of `table` matching `row_filter` (only `selected_fields`), read one data file at a time, the
    next one while the caller works on this one's rows: a silver run waited on each file's read for a quarter
    of cutting its rows into chunks (`silver/chunks.py`), computing nothing. Two files' rows are held."""
    scan = table.scan(row_filter=row_filter, selected_fields=tuple(selected_fields))
    reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)

    def read(task: FileScanTask) -> list[pa.RecordBatch]:
        return list(reader.to_record_batches([task]))

    tasks = iter(scan.plan_files())
    ahead = _READER.submit(read, task) if (task := next(tasks, None)) else None
    try:
        while ahead is not None:
            batches = ahead.result()
            ahead = _READER.submit(read, task) if (task := next(tasks, None)) else None
            yield from batches
    finally:
        if ahead is not None:  # the caller stopped early: the file being read is not needed
            ahead.cancel()


def scratch_writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer for a run's scratch file, read back whole and deleted: without column statistics,
    which were a quarter of writing a silver run's chunks and are never read."""
    return pq.ParquetWriter(path, schema, write_statistics=False)


def write_scratch(frame: pl.DataFrame, path: Path) -> None:
    """A frame as a run's scratch file (see `scratch_writer`), uncompressed: Polars' default zstd was a fifth
    of writing and reading back a silver run's passing rows (on local disk, deleted within the run)."""
    frame.write_parquet(path, compression="uncompressed", statistics=False)


FileReader = Callable[[Sequence[str] | None], pa.Table]
"""Reads one planned data file: all its rows, of every column or only of the named ones."""


def planned_files(
    table: Table, row_filter: BooleanExpression, wanted: Callable[[DataFile], bool] | None = None
) -> Iterator[tuple[DataFile, FileReader]]:
    """Each data file that `row_filter` may match (by partition and column metrics) and `wanted` keeps, with
    a reader of ALL its rows (no row filter): what a copy-on-write rewrite of the file starts from. Nothing
    is read until the reader is called, so a caller can read a few columns first and the rest only if needed.
    """
    scan = table.scan(row_filter=row_filter)
    schema = scan.table_metadata.schema()
    for task in scan.plan_files():
        if wanted is not None and not wanted(task.file):
            continue

        def read(columns: Sequence[str] | None = None, task: FileScanTask = task) -> pa.Table:
            projection = schema if columns is None else schema.select(*columns)
            return ArrowScan(scan.table_metadata, scan.io, projection, ALL_ROWS).to_table([task])

        yield task.file, read


def scan_frames(
    table: Table, row_filter: BooleanExpression = ALL_ROWS, selected_fields: Sequence[str] = ("*",)
) -> Iterator[pl.DataFrame]:
    """`scan_batches` as Polars frames."""
    for batch in scan_batches(table, row_filter, selected_fields):
        yield pl.from_arrow(batch)  # type: ignore[misc]


def as_table_rows(table: Table, frame: pl.DataFrame) -> pa.Table:
    """A frame in the table's Arrow schema: its columns in order, a column it lacks as nulls."""
    target = table.schema().as_arrow()
    missing = [name for name in target.names if name not in frame.columns]
    if missing:
        frame = frame.with_columns(pl.lit(None).alias(name) for name in missing)
    return frame.select(target.names).to_arrow().cast(target)


_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medlake-staged-write")


class StagedFiles:
    """Data files of one commit, written chunk by chunk before it (not yet part of the table).

    `in_background`: a write goes on while the caller prepares the next one (the one before it is waited
    for first, so one more chunk is held, not more); `files` waits for the last. A surge run's thread
    waited 7% of the run on bronze's writes, computing nothing (py-spy, docs/benchmarks.md). Silver keeps
    writing in the foreground: there the chunk held beside the next merge cost its peak 135 MB."""

    def __init__(self, table: Table, *, in_background: bool = False) -> None:
        self.table = table
        self.in_background = in_background
        self.commit_uuid = uuid.uuid4()
        self._counter = itertools.count(0)
        self._files: list[DataFile] = []
        self._pending: Future[list[DataFile]] | None = None

    @property
    def files(self) -> list[DataFile]:
        self._finish_pending()
        return self._files

    @property
    def rows(self) -> int:
        return sum(data_file.record_count for data_file in self.files)

    def write(self, rows: pa.Table) -> None:
        """Write `rows` (in the table's Arrow schema) as data files; memory is this chunk's alone (and the
        one before it, while it is written in the background)."""
        if not len(rows):
            return
        self._finish_pending()
        # pyiceberg's own writer for the files an append or overwrite adds (partitioned and bin-packed by
        # `write.target-file-size-bytes`); private in 0.12, as in `tables/maintenance.py`. The metadata is
        # taken now: the caller may refresh the table before a background write is done.
        metadata = self.table.metadata

        def write() -> list[DataFile]:
            return list(
                _dataframe_to_data_files(
                    table_metadata=metadata,
                    df=rows,
                    io=self.table.io,
                    write_uuid=self.commit_uuid,
                    counter=self._counter,
                )
            )

        if self.in_background:
            self._pending = _WRITER.submit(write)
        else:
            self._files.extend(write())

    def write_frame(self, frame: pl.DataFrame) -> None:
        self.write(as_table_rows(self.table, frame))

    def _finish_pending(self) -> None:
        """Wait for the write in flight; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._files.extend(pending.result())

    def discard(self) -> None:
        """Delete the staged files (after a commit that cannot be retried with them, or a failure)."""
        with contextlib.suppress(Exception):  # a failed write: the caller is already handling an error
            self._finish_pending()
        for data_file in self._files:
            self.table.io.delete(data_file.file_path)
        self._files = []


def commit_files(
    table: Table,
    files: Sequence[DataFile],
    delete_filter: BooleanExpression,
    properties: Mapping[str, str],
    *,
    replaced: Sequence[DataFile] | None = None,
) -> None:
    """Remove rows and add `files`, in one transaction of `table`.

    Without `replaced`: the rows matching `delete_filter` are deleted (files wholly matching dropped,
    partly matching ones rewritten without those rows), then `files` are appended. With `replaced`: one
    overwrite snapshot removes exactly those data files (their rows already read and written again) and
    adds `files`, and `delete_filter` only scopes the conflict check.

    Commit through the `Table` whose state the files were computed from, without refreshing it in between:
    pyiceberg then validates (serializable isolation, its default) that no commit since added or removed
    files the filter matches, and raises instead of losing a concurrent update.
    """
    deletes = not isinstance(delete_filter, AlwaysFalse)
    if not deletes and not files:
        return
    transaction = table.transaction()
    if replaced is not None:
        with merging_overwrite(transaction, properties) as overwrite:
            overwrite.delete_by_predicate(delete_filter)
            for data_file in replaced:
                overwrite.delete_data_file(data_file)
            for data_file in files:
                overwrite.append_data_file(data_file)
        transaction.commit_transaction()
        return
    if deletes:
        with warnings.catch_warnings():
            # A batch of only new rows deletes nothing; pyiceberg warns about it, which is expected here.
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            transaction.delete(delete_filter, snapshot_properties=dict(properties))
    if files:
        # A merge append: a plain append when the table does not merge manifests (`lake.manifests`).
        with transaction.update_snapshot(snapshot_properties=dict(properties)).merge_append() as append:
            for data_file in files:
                append.append_data_file(data_file)
    transaction.commit_transaction()


def replace_with_files(
    staged: StagedFiles,
    delete_filter: BooleanExpression,
    properties: Mapping[str, str],
    attempts: int = REDO_ATTEMPTS,
) -> None:
    """Commit staged files whose rows do not depend on the table's state (a batch's own rows, rejects) in
    place of the rows matching `delete_filter`; on a conflict the same files are committed again on fresh
    metadata, which is safe because the rows this filter selects belong to this writer alone."""
    table = staged.table
    for attempt in range(attempts):
        try:
            commit_files(table, staged.files, delete_filter, properties)
            return
        except CONFLICTS:
            if attempt == attempts - 1:
                staged.discard()  # nothing of any attempt landed
                raise
            wait_before_redo(attempt)
            table.refresh()
