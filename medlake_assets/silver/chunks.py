"""A silver run's bronze rows cut into chunks on local disk, so that typing, checking and merging hold one
chunk at a time instead of the whole day.

Not any cut will do: a `unique` rule compares the rows of a run with each other, and an upsert or scd2
merge must see every version of a key together. `chunk_columns` names the typed columns whose values a
chunk never splits (the first one or two key columns that every unique rule's key also has); the gate's
per-facility decision needs no such care, because its counts add up over chunks (see `silver/load.py`).

`spill_chunks` reads bronze twice, one data file at a time: first only those columns, typed (a transform or
a cast may make two raw values one key) and counted per value, from which `silver/merge.py: plan_chunks`
draws chunks of about `max_rows` that never split a key; then every row, appended to the
Parquet file of its chunk. Rows stay as bronze has them; each chunk is typed again when its turn comes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from medlake_assets.lake.files import scan_batches, scan_frames, scratch_writer
from medlake_assets.silver.merge import ChunkFinder, plan_chunks
from medlake_assets.silver.quality.schemas import unique_key
from medlake_assets.silver.typed import apply_types
from medlake_assets.spec import SourceSpec


@dataclass
class Chunks:
    """Bronze rows of one silver run, one Parquet file per chunk, in chunk order."""

    paths: list[Path] = field(default_factory=list)
    passed: list[Path] = field(default_factory=list)
    """The chunks' passing rows, typed, once audited (`silver/load.py`)."""
    rows: int = 0
    archives: set[str] = field(default_factory=set)


def chunk_columns(spec: SourceSpec) -> list[str] | None:
    """The typed columns whose values a chunk must not split: [] when any cut is fine (append without a
    unique rule), None when the rows cannot be cut at all (unique rules sharing no column)."""
    unique_keys = [unique_key(spec, check) for check in spec.checks if check.rule == "unique"]
    key = list(spec.write.primary_key) if spec.write.mode != "append" else []
    if not key and not unique_keys:
        return []
    candidates = key or unique_keys[0]
    common = [name for name in candidates if all(name in other for other in unique_keys)]
    return common[:2] or None


def _typed_keys(frame: pl.DataFrame, spec: SourceSpec, columns: list[str]) -> pl.DataFrame:
    """The typed values of `columns` for bronze rows (the columns' own transforms and casts)."""
    only = spec.model_copy(update={"columns": [c for c in spec.columns if c.name in columns]})
    return apply_types(frame.select(columns), only).frame.select(columns)


def _plan(table: Table, row_filter: BooleanExpression, spec: SourceSpec, columns: list[str], max_rows: int):
    counts: list[pl.DataFrame] = []
    for frame in scan_frames(table, row_filter, columns):
        counts.append(_typed_keys(frame, spec, columns).group_by(columns).agg(pl.len().alias("rows")))
        if len(counts) >= 32:  # keep the partial counts small
            counts = [pl.concat(counts).group_by(columns).agg(pl.col("rows").sum())]
    if not counts:
        return None
    groups = pl.concat(counts).group_by(columns).agg(pl.col("rows").sum())
    return plan_chunks(groups, columns, max_rows)


def spill_chunks(
    table: Table, row_filter: BooleanExpression, spec: SourceSpec, folder: Path, max_rows: int
) -> Chunks:
    """Write the bronze rows matching `row_filter` into chunk files under `folder` (see the module doc)."""
    columns = chunk_columns(spec)
    plan = _plan(table, row_filter, spec, columns, max_rows) if columns else None
    finder = ChunkFinder(".".join(table.name()), plan, columns) if plan is not None else None
    writers: dict[int, pq.ParquetWriter] = {}
    chunks = Chunks()
    try:
        for batch in scan_batches(table, row_filter):
            if not batch.num_rows:
                continue
            if finder is not None:
                keys = _typed_keys(pl.from_arrow(batch.select(columns)), spec, columns)  # type: ignore[arg-type]
                chunk_of_row = finder.chunks(keys)
            elif columns == []:
                chunk_of_row = (chunks.rows + np.arange(batch.num_rows)) // max_rows
            else:
                chunk_of_row = np.zeros(batch.num_rows, dtype=np.int64)
            chunks.rows += batch.num_rows
            chunks.archives.update(pc.unique(batch.column("_archive")).drop_null().to_pylist())
            for number, part in _parts_by_chunk(batch, chunk_of_row):
                if number not in writers:
                    writers[number] = scratch_writer(folder / f"chunk-{number:05d}.parquet", part.schema)
                writers[number].write_table(part)
    finally:
        for writer in writers.values():
            writer.close()
    if finder is not None:
        finder.check()
    chunks.paths = [folder / f"chunk-{number:05d}.parquet" for number in sorted(writers)]
    return chunks


def _parts_by_chunk(batch: pa.RecordBatch, chunk_of_row: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """Each chunk's rows of `batch`, in batch order: one gather into chunk order, then a slice per chunk (a
    filter per chunk copied the whole batch once per chunk it touched, and even when it touched one)."""
    first = chunk_of_row[0]
    if (chunk_of_row == first).all():
        yield int(first), pa.Table.from_batches([batch])
        return
    order = np.argsort(chunk_of_row, kind="stable")
    numbers, starts = np.unique(chunk_of_row[order], return_index=True)
    ordered = batch.take(pa.array(order))
    for number, start, end in zip(numbers, starts, [*starts[1:], len(order)], strict=True):
        yield int(number), pa.Table.from_batches([ordered.slice(start, end - start)])
