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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import BooleanExpression
from pyiceberg.table import Table

from medlake_assets.lake.files import scan_batches, scan_frames
from medlake_assets.silver.merge import plan_chunks
from medlake_assets.silver.quality.schemas import unique_key
from medlake_assets.silver.typed import apply_types
from medlake_assets.spec import SourceSpec

_CHUNK = "__chunk"


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
    return plan_chunks(groups, columns, max_rows).rename({"chunk": _CHUNK})


class ChunkFinder:
    """The chunk of each row from a plan (`plan_chunks`' groups, by value of `columns`), without joining
    every batch with the whole plan: a surge's lab batch plans millions of (facility, order) pairs, and
    hashing them again for each bronze batch took a fifth of its silver run. A first-column value in one
    chunk is found by that value (a few thousand facilities); one cut into chunks by sorted ranges of the
    second column (a large facility) by the range its second value falls in; a row with a null goes to the
    plan's null chunk. Rows the plan does not know are caught by `check`: each chunk's rows must add up to
    the plan's."""

    def __init__(self, table: str, plan: pl.DataFrame, columns: list[str]):
        self.table, self.columns, first = table, columns, columns[0]
        has_null = pl.any_horizontal(pl.col(name).is_null() for name in columns)
        self.null_chunk = plan.filter(has_null).get_column(_CHUNK).max()
        planned = plan.filter(~has_null)
        cut = pl.col(_CHUNK).n_unique().over(first) > 1
        self.whole = planned.filter(~cut).select(first, _CHUNK).unique()
        # Each cut chunk from the lowest second value it holds: a row takes the last one at or below it.
        self.cut = (
            planned.filter(cut)
            .group_by(first, _CHUNK)
            .agg(pl.col(columns[-1]).min().alias("__from"))
            .sort("__from")
        )
        self.expected = dict(plan.group_by(_CHUNK).agg(pl.col("rows").sum()).iter_rows())
        self.found: dict[int, int] = {}

    def chunks(self, keys: pl.DataFrame) -> np.ndarray:
        """The chunk number of each row of `keys` (typed values of the plan's columns), in row order."""
        first, last = self.columns[0], self.columns[-1]
        rows = keys.with_row_index("__row")
        has_null = pl.any_horizontal(pl.col(name).is_null() for name in self.columns)
        found = [
            rows.filter(has_null).select("__row", pl.lit(self.null_chunk, pl.Int64).alias(_CHUNK)),
            rows.filter(~has_null).join(self.whole, on=first, how="inner").select("__row", _CHUNK),
        ]
        if self.cut.height:
            in_cut = rows.filter(~has_null).join(self.cut.select(first).unique(), on=first, how="semi")
            placed = in_cut.sort(last).join_asof(
                self.cut,
                left_on=last,
                right_on="__from",
                by=first,
                strategy="backward",
                check_sortedness=False,
            )
            found.append(placed.select("__row", _CHUNK))
        numbers = pl.concat(found).sort("__row").get_column(_CHUNK)
        if len(numbers) != keys.height or numbers.null_count():
            raise self._changed()
        for number, count in numbers.value_counts().iter_rows():
            self.found[number] = self.found.get(number, 0) + count
        return numbers.to_numpy()

    def check(self) -> None:
        if self.found != self.expected:
            raise self._changed()

    def _changed(self) -> RuntimeError:
        return RuntimeError(f"table {self.table}: rows changed between the two reads")


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
            for number in np.unique(chunk_of_row):
                part = pa.Table.from_batches([batch.filter(pa.array(chunk_of_row == number))])
                if number not in writers:
                    writers[number] = pq.ParquetWriter(folder / f"chunk-{number:05d}.parquet", part.schema)
                writers[number].write_table(part)
    finally:
        for writer in writers.values():
            writer.close()
    if finder is not None:
        finder.check()
    chunks.paths = [folder / f"chunk-{number:05d}.parquet" for number in sorted(writers)]
    return chunks
