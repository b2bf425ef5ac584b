"""Silver write modes as pure Polars merges, committed as one copy-on-write Iceberg overwrite.

A batch of typed change rows (declared columns plus lineage) is merged with the current silver rows of
its keys, and the result replaces exactly the data files that held those rows, in one commit:

    scope = merge_scope(keys, partition_by, key)       # the partitions and key values or ranges touched
    for each data file scope and key bounds may match:  # key columns first; whole if replaced
        replaced += the file if it holds a batch key, or is small beside other small files of its partition
        its rows of the batch's keys -> their chunk; staged += its other rows (all replaced files together)
    for each chunk: staged += upsert(current rows of its keys, its changes)   # or scd2(...)
    one overwrite snapshot: remove `replaced`, add `staged` (pyiceberg checks `scope` for conflicts)

`merge_chunks` does this for a batch held chunk by chunk on disk (memory is one chunk, or one data file),
`merge_into` for one frame; both redo everything when a concurrent commit conflicts. `plan_chunks` cuts a
batch into chunks that never split a key. Each data file is read and rewritten at most once per run,
however many chunks touch it: a filtered Iceberg delete per run (pyiceberg's own copy-on-write) read
every touched file a second time, and per-chunk filters re-read the touched partitions once per chunk.
pyiceberg's own `Table.upsert` is not used: it took 221-317 s for 100k keys on a 1M-row partitioned
table and 0.12.0 duplicates rows on partitioned tables (design.md section 5).

Modes:
- `append`: no merge. The batch's rows replace the rows of its archives (`archive_filter`), exactly like
  bronze, so a re-run of a batch never duplicates.
- `upsert`: one row per key, the latest by `sequence_by`. Deleted keys stay as tombstones
  (`_deleted = true`) so that an older insert arriving after the delete cannot resurrect the key;
  readers use `WHERE NOT _deleted`.
- `scd2`: every version of a key with `_valid_from` (the first `sequence_by` column), `_valid_to` (null =
  open) and `_is_current`; late changes are slotted into the history.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.conversions import from_bytes
from pyiceberg.expressions import (
    AlwaysFalse,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThanOrEqual,
    Or,
)
from pyiceberg.expressions.visitors import IN_PREDICATE_LIMIT
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.typedef import Record
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.columns import DELETED, IS_CURRENT, SCD2_COLUMNS, TIE_BREAK, VALID_FROM, VALID_TO
from medlake_assets.lake.commits import CONFLICTS, REDO_ATTEMPTS, wait_before_redo
from medlake_assets.lake.files import (
    FileReader,
    StagedFiles,
    as_table_rows,
    commit_files,
    planned_files,
    scratch_writer,
    write_scratch,
)
from medlake_assets.lake.partitions import iceberg_literal, parse_partition, partition_by_of


class MergeConflictError(MedlakeError, RuntimeError):
    """Concurrent commits kept conflicting with a merge after every retry."""


def _order(
    columns: Sequence[str], sequence_by: Sequence[str], sequence_ranks: Mapping[str, Sequence[str]] | None
) -> list[pl.Expr]:
    """Ascending sort keys: the sequence (ranked text mapped to its rank), then the arrival tie-break."""
    ranks = sequence_ranks or {}
    exprs = [
        pl.col(name).replace_strict(
            list(ranks[name]), list(range(len(ranks[name]))), default=None, return_dtype=pl.Int32
        )
        if name in ranks
        else pl.col(name)
        for name in sequence_by
    ]
    return exprs + [pl.col(name) for name in TIE_BREAK if name in columns]


def _with_deleted(changes: pl.DataFrame, delete_marker: tuple[str, str] | None) -> pl.DataFrame:
    if delete_marker is None:
        flag = pl.lit(False)
    else:
        column, value = delete_marker
        flag = (pl.col(column) == value).fill_null(False)
    return changes.with_columns(flag.alias(DELETED))


def _split(
    current: pl.DataFrame, changes: pl.DataFrame, key: Sequence[str]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(current rows whose key the batch touches, the rest): only the former compete with the changes."""
    touched = changes.select(key).unique().with_columns(pl.lit(True).alias("__touched"))
    tagged = current.join(touched, on=list(key), how="left", nulls_equal=True)
    hit = pl.col("__touched").fill_null(False)
    return tagged.filter(hit).drop("__touched"), tagged.filter(~hit).drop("__touched")


def _conform(current: pl.DataFrame, changes: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """Current rows with the merge's columns (the table's order, then any only the changes have)."""
    if current.width == 0:
        current = pl.DataFrame(schema=changes.schema)
    columns = [name for name in current.columns if name not in SCD2_COLUMNS]
    columns += [name for name in changes.columns if name not in columns]
    missing = [
        pl.lit(None, dtype=changes.schema[name]).alias(name)
        for name in columns
        if name not in current.columns
    ]
    return current.with_columns(missing).select(columns), columns


def upsert(
    current: pl.DataFrame,
    changes: pl.DataFrame,
    *,
    key: Sequence[str],
    sequence_by: Sequence[str],
    sequence_ranks: Mapping[str, Sequence[str]] | None = None,
    delete_marker: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """One row per key: the latest version by `sequence_by`, whatever order the events arrived in.

    Current rows compete with the changes on equal terms. Versions are ordered by the `sequence_by`
    columns (nulls lowest; a column in `sequence_ranks` orders by the position of its value in the list,
    e.g. {"result_status": ["P", "F", "C"]} means P < F < C, unknown values lowest); ties on the full
    sequence go to the later arrival: larger `_ingested_at`, then `_batch`, `_archive`, `_member`,
    `_record`. The winner is the maximum of this total order, so the result, lineage included, never
    depends on how events were split into batches or in which order batches were applied. An exact
    duplicate or a re-run of a batch leaves every value unchanged; only the lineage's `_ingested_at` and
    `_batch` then name the latest delivery. (Keeping the older lineage instead would make the result
    depend on the order batches are applied in when different content ties on the full sequence.)

    A change whose `delete_marker[0]` column equals `delete_marker[1]` is a delete: its key stays as a
    tombstone with `_deleted = true` (readers filter `NOT _deleted`), so an older insert arriving later
    loses to it, while a later insert brings the key back with `_deleted = false`.
    """
    changes = _with_deleted(changes, delete_marker)
    current, columns = _conform(current, changes)
    competing, untouched = _split(current, changes, key)
    candidates = pl.concat([competing, changes.select(columns)], how="vertical_relaxed")
    # Only keys with two or more versions need ordering: in a batch most keys are new and arrive once, and
    # sorting every candidate by the sequence and the arrival columns was a fifth of a lab batch's merge.
    contested = candidates.select(pl.struct(key).is_duplicated()).to_series()
    winners = (
        candidates.filter(contested)
        .sort(_order(columns, sequence_by, sequence_ranks), maintain_order=True)
        .unique(subset=list(key), keep="last", maintain_order=True)
    )
    return pl.concat([untouched, candidates.filter(~contested), winners], how="vertical_relaxed")


def scd2(
    current: pl.DataFrame,
    changes: pl.DataFrame,
    *,
    key: Sequence[str],
    sequence_by: Sequence[str],
    sequence_ranks: Mapping[str, Sequence[str]] | None = None,
    delete_marker: tuple[str, str] | None = None,
) -> pl.DataFrame:
    """Full history per key with `_valid_from`, `_valid_to` (null = open) and `_is_current`.

    Every distinct full sequence of a key is one version; `_valid_from` is its first `sequence_by` value
    and `_valid_to` the next version's `_valid_from`, so a late change lands in the middle of the history:
    the version before it is closed at the late change's start and the late change at the next version's.
    Versions with the same full sequence are resolved as in `upsert` (the later arrival wins), so
    duplicates and re-runs change no value (only the lineage names the latest delivery). A delete (see
    `upsert`) is a version with `_deleted = true`: while it is the latest, the key has no live current row.
    """
    changes = _with_deleted(changes, delete_marker)
    history, columns = _conform(current, changes)
    if VALID_FROM in current.columns:
        history = history.with_columns(current.select(SCD2_COLUMNS))
    else:
        history = history.with_columns(
            pl.lit(None, dtype=changes.schema[sequence_by[0]]).alias(VALID_FROM),
            pl.lit(None, dtype=changes.schema[sequence_by[0]]).alias(VALID_TO),
            pl.lit(None, dtype=pl.Boolean).alias(IS_CURRENT),
        )
    competing, untouched = _split(history, changes, key)
    candidates = pl.concat([competing.select(columns), changes.select(columns)], how="vertical_relaxed")
    versions = candidates.sort(_order(columns, sequence_by, sequence_ranks), maintain_order=True).unique(
        subset=[*key, *sequence_by], keep="last", maintain_order=True
    )
    by_key = list(key)
    rebuilt = (
        versions.sort([*by_key, *_order(columns, sequence_by, sequence_ranks)], maintain_order=True)
        .with_columns(pl.col(sequence_by[0]).alias(VALID_FROM))
        .with_columns(
            pl.col(VALID_FROM).shift(-1).over(by_key).alias(VALID_TO),
            (pl.int_range(pl.len()).over(by_key) == pl.len().over(by_key) - 1).alias(IS_CURRENT),
        )
    )
    return pl.concat([untouched, rebuilt.select(untouched.columns)], how="vertical_relaxed")


def append(changes: pl.DataFrame) -> pl.DataFrame:
    """Append mode writes the batch as is; commit it with `archive_filter` so a re-run replaces its rows."""
    return changes


def archive_filter(changes: pl.DataFrame) -> BooleanExpression:
    """The rows of the batch's archives: an append-mode overwrite filter, like bronze's."""
    archives = changes.get_column("_archive").unique().drop_nulls().to_list()
    return In("_archive", archives) if archives else AlwaysFalse()


def _between(column: str, low: object, high: object) -> BooleanExpression:
    low, high = iceberg_literal(low), iceberg_literal(high)
    return And(GreaterThanOrEqual(column, low), LessThanOrEqual(column, high))


def _values_filter(column: str, values: pl.Series) -> BooleanExpression:
    literals = [iceberg_literal(value) for value in values.unique().drop_nulls().sort().to_list()]
    found: BooleanExpression = In(column, literals) if literals else AlwaysFalse()
    return Or(found, IsNull(column)) if values.null_count() else found


def _range_filter(column: str, values: pl.Series) -> BooleanExpression:
    known = values.drop_nulls()
    found = _between(column, known.min(), known.max()) if len(known) else AlwaysFalse()
    return Or(found, IsNull(column)) if values.null_count() else found


def plan_chunks(groups: pl.DataFrame, columns: Sequence[str], max_rows: int) -> pl.DataFrame:
    """A chunk number for every group of a batch's rows, so that the batch can be merged chunk by chunk.

    `groups` has the distinct values of `columns` (the first one or two key columns) and their `rows`.
    Rows with the same values always share a chunk (so no key is in two: `merge_chunks` needs that), and
    a chunk holds about `max_rows` rows:

    - values of the first column are taken in sorted order and packed whole into chunks;
    - a first-column value with more than `max_rows` rows (a facility's 40 MB archive) gets chunks of its
      own, cut between sorted values of the second column (disjoint ranges of it);
    - groups with a null in any column go to one last chunk.

    Chunks are numbered from 0 in the first column's order: each holds a range of it that no other chunk
    enters, so a merge's keys, taken chunk by chunk, come sorted by it (`_stage_merge`). Returns `groups`
    with a `chunk` column.
    """
    first = columns[0]
    start = pl.col("rows").cum_sum() - pl.col("rows")  # rows before this group (in its window)
    has_null = pl.any_horizontal(pl.col(name).is_null() for name in columns)
    valid = groups.filter(~has_null)
    large = pl.col("rows") > max_rows if len(columns) > 1 else pl.lit(False)
    per_first = (
        valid.group_by(first)
        .agg(pl.col("rows").sum())
        .sort(first)
        .with_columns(large.alias("large"))
        # A run is a stretch of whole values between large ones, or one large value.
        .with_columns((pl.col("large") | pl.col("large").shift(1, fill_value=False)).cum_sum().alias("run"))
    )
    whole = per_first.filter(~pl.col("large")).with_columns((start.over("run") // max_rows).alias("part"))
    split = (
        valid.join(per_first.filter(pl.col("large")).select(first, "run"), on=first, how="inner")
        .sort(columns[:2])
        .with_columns((start.over(first) // max_rows).alias("part"))
    )
    planned = pl.concat(
        [
            valid.join(whole.select(first, "run", "part"), on=first, how="inner"),
            split.select(*groups.columns, "run", "part"),
        ],
        how="vertical_relaxed",
    )
    ordinal = pl.struct(pl.col("run").cast(pl.Int64), pl.col("part").cast(pl.Int64)).rank("dense")
    planned = planned.with_columns((ordinal.cast(pl.Int64) - 1).alias("chunk")).drop("run", "part")
    last = int(planned.get_column("chunk").max() or 0) + 1 if planned.height else 0
    return pl.concat(
        [planned, groups.filter(has_null).with_columns(pl.lit(last, dtype=pl.Int64).alias("chunk"))],
        how="vertical_relaxed",
    ).with_columns(pl.col("chunk").cast(pl.Int64))


class ChunkFinder:
    """The chunk of each row from a plan (`plan_chunks`' groups with their chunk), without joining each
    frame of a batch with the whole plan: a surge's lab batch plans millions of (facility, order) pairs, and
    hashing them again for each bronze batch took a fifth of its silver run. A first-column value in one
    chunk is found by that value (a few thousand facilities); one cut into chunks by sorted ranges of the
    second column (a large facility) by the range its second value falls in; a row with a null goes to the
    plan's null chunk. Rows the plan does not know are caught by `check`: each chunk's rows must add up to
    the plan's."""

    def __init__(self, table: str, plan: pl.DataFrame, columns: list[str]):
        self.table, self.columns, first = table, columns, columns[0]
        has_null = pl.any_horizontal(pl.col(name).is_null() for name in columns)
        self.null_chunk = plan.filter(has_null).get_column("chunk").max()
        planned = plan.filter(~has_null)
        cut = pl.col("chunk").n_unique().over(first) > 1
        self.whole = planned.filter(~cut).select(first, "chunk").unique()
        # Each cut chunk from the lowest second value it holds: a row takes the last one at or below it.
        self.cut = (
            planned.filter(cut)
            .group_by(first, "chunk")
            .agg(pl.col(columns[-1]).min().alias("__from"))
            .sort("__from")
        )
        self.expected = dict(plan.group_by("chunk").agg(pl.col("rows").sum()).iter_rows())
        self.found: dict[int, int] = {}

    def chunks(self, keys: pl.DataFrame) -> np.ndarray:
        """The chunk number of each row of `keys` (typed values of the plan's columns), in row order."""
        first, last = self.columns[0], self.columns[-1]
        rows = keys.with_row_index("__row")
        has_null = pl.any_horizontal(pl.col(name).is_null() for name in self.columns)
        found = [
            rows.filter(has_null).select("__row", pl.lit(self.null_chunk, pl.Int64).alias("chunk")),
            rows.filter(~has_null).join(self.whole, on=first, how="inner").select("__row", "chunk"),
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
            found.append(placed.select("__row", "chunk"))
        numbers = pl.concat(found).sort("__row").get_column("chunk")
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


def merge_scope(keys: pl.DataFrame, partition_by: Sequence[str], key: Sequence[str]) -> BooleanExpression:
    """A row filter covering every row that may hold a version of `keys` (a batch's key columns), for
    pyiceberg to choose the data files a merge reads: per partition source column and the key's first
    column, their values when few, else their range; with a single value of the first column, the range of
    the second too (one facility's 40 MB archive then reads only the files of its order range).

    Never a long IN list: pyiceberg binds and projects an IN again for every data file it plans (Python
    sets of every literal through the bucket hash), which took most of an encounters run for 200k visits.
    The filter only has to cover: which rows a merge replaces is decided by joining on the key.
    """
    if keys.is_empty():
        return AlwaysFalse()
    columns = [parse_partition(field)[1] for field in partition_by]
    for name in columns:
        if name not in key:
            raise ValueError(f"partition column {name!r} is not a key column; a key could span partitions")
    columns = list(dict.fromkeys([key[0], *columns]))
    if len(key) > 1 and keys.get_column(key[0]).n_unique() == 1:
        columns.append(key[1])
    terms = [_compact_filter(name, keys.get_column(name)) for name in dict.fromkeys(columns)]
    return terms[0] if len(terms) == 1 else And(*terms)


def _compact_filter(column: str, values: pl.Series) -> BooleanExpression:
    few = values.drop_nulls().n_unique() <= IN_PREDICATE_LIMIT
    return _values_filter(column, values) if few else _range_filter(column, values)


Chunk = Callable[[], pl.DataFrame] | Path
"""One chunk of a batch's change rows: a Parquet file of them, taken as it is, or a function that loads
them when the merge gets to it."""
Combine = Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame]
"""(current rows of a chunk's keys, its changes) -> the rows to upsert for the changes' keys."""


def merge_chunks(
    table: Table,
    chunks: Sequence[Chunk],
    *,
    mode: Literal["append", "upsert", "scd2"],
    key: Sequence[str] = (),
    sequence_by: Sequence[str] = (),
    sequence_ranks: Mapping[str, Sequence[str]] | None = None,
    delete_marker: tuple[str, str] | None = None,
    snapshot_properties: Mapping[str, str] | None = None,
    attempts: int = REDO_ATTEMPTS,
    combine: Combine | None = None,
    replace_archives: bool = True,
) -> Table:
    """Merge a batch given as chunks into `table` in one commit, holding one chunk at a time.

    No key may be in two chunks (`plan_chunks`). Every data file that may hold a key of the batch is read
    once, whole: rows of the batch's keys go to their chunk, the rest of a file that had any is written
    back as it is. Each chunk is then merged with its current rows and written; one overwrite snapshot
    removes exactly the files read and adds every file written (copy-on-write). On a conflicting
    concurrent commit the staged files are deleted and everything is redone on the refreshed table (a
    blind retry could lose the other writer's rows). Returns the refreshed table.

    `combine` (upsert only) turns each chunk's changes into the rows to upsert, given the current rows of
    its keys: e.g. a running fold whose new state depends on the current one (`silver.encounters`). Read
    in the same pass as the merge's own, those rows are covered by the commit's conflict check.

    An append replaces the rows its archives already have in the table (a re-run) unless the caller knows
    there are none (`replace_archives=False`, `silver/load.py: may_hold_earlier_rows`).
    """
    properties = dict(snapshot_properties or {})
    for attempt in range(attempts):
        staged = StagedFiles(table)
        try:
            with tempfile.TemporaryDirectory(prefix="medlake-merge-") as scratch:
                scope, replaced = _stage_merge(
                    table,
                    staged,
                    chunks,
                    Path(scratch),
                    mode,
                    key,
                    sequence_by,
                    sequence_ranks,
                    delete_marker,
                    combine,
                    replace_archives,
                )
        except BaseException:
            staged.discard()
            raise
        try:
            commit_files(table, staged.files, scope, properties, replaced=replaced)
            return table.refresh()
        except CONFLICTS:
            staged.discard()  # nothing of the attempt landed
            if attempt == attempts - 1:
                name = ".".join(table.name())
                raise MergeConflictError(
                    f"table {name}: merge conflicted with concurrent commits {attempts} times"
                ) from None
            wait_before_redo(attempt)
            table = table.refresh()
    raise AssertionError("unreachable")


def _stage_merge(
    table: Table,
    staged: StagedFiles,
    chunks: Sequence[Chunk],
    scratch: Path,
    mode: str,
    key: Sequence[str],
    sequence_by: Sequence[str],
    sequence_ranks: Mapping[str, Sequence[str]] | None,
    delete_marker: tuple[str, str] | None,
    combine: Combine | None,
    replace_archives: bool,
) -> tuple[BooleanExpression, list[DataFile] | None]:
    """Write every chunk's merged rows as staged files; returns the filter scoping what they replace and
    the data files they replace (None for append: the filter's rows are deleted)."""
    if mode == "append":
        archives: set[str] = set()
        for chunk in chunks:
            changes = _load(chunk)
            archives.update(changes.get_column("_archive").unique().drop_nulls().to_list())
            staged.write_frame(append(changes))
        # Like `archive_filter`: a re-run of the batch replaces its archives' rows.
        return (In("_archive", sorted(archives)) if archives and replace_archives else AlwaysFalse()), None
    keys, change_files = _spill_changes(chunks, key, scratch)
    if keys.is_empty():
        return AlwaysFalse(), []
    scope = merge_scope(keys, partition_by_of(table), key)
    empty = pl.from_arrow(table.schema().as_arrow().empty_table())
    numbers = keys.get_column(_CHUNK).unique().sort().to_list()
    # The batch's keys are the merge's largest object (millions in a surge's lab batch): one copy, in the
    # table's types, let go before the chunks are merged. Chunks hold disjoint ranges of the first key
    # column (`plan_chunks`) and each chunk's keys come sorted, so `keys_within_bounds` need not sort them.
    keys = keys.with_columns(pl.col(name).cast(empty.schema[name]) for name in key)
    replaced = _split_current(table, scope, keys, key, staged, scratch)
    del keys
    merge = upsert if mode == "upsert" else scd2
    for number in numbers:
        changes = pl.read_parquet(change_files[number])
        path = scratch / _spill_name(number)
        current = pl.read_parquet(path) if path.exists() else empty
        if combine is not None and mode == "upsert":
            changes = combine(current, changes)
        merged = merge(
            current,
            changes,
            key=key,
            sequence_by=sequence_by,
            sequence_ranks=sequence_ranks,
            delete_marker=delete_marker,
        )
        del changes, current
        # Sorted by key: each file written covers a narrow key range, which `key_bounds_check` prunes by.
        staged.write_frame(merged.sort(key, nulls_last=True, maintain_order=True))
    return scope, replaced


_CHUNK = "__chunk"


def _load(chunk: Chunk) -> pl.DataFrame:
    return pl.read_parquet(chunk) if isinstance(chunk, Path) else chunk()


def _spill_changes(
    chunks: Sequence[Chunk], key: Sequence[str], scratch: Path
) -> tuple[pl.DataFrame, dict[int, Path]]:
    """Have each chunk's changes in a file, loading each chunk once (a chunk given as a file stays where
    it is: writing it again took a tenth of a surge's lab_results run); returns the batch's distinct keys
    with their chunk number, and the file of each chunk's changes."""
    keys, prefixes, files = [], [], {}
    for number, chunk in enumerate(chunks):
        if isinstance(chunk, Path):
            path, distinct = chunk, pl.read_parquet(chunk, columns=list(key)).unique()
        else:
            changes = chunk()
            path, distinct = scratch / f"changes-{number}.parquet", changes.select(key).unique()
            if not changes.is_empty():
                write_scratch(changes, path)
            del changes
        if distinct.is_empty():
            continue
        files[number] = path
        distinct = distinct.sort(key[0])
        keys.append(scratch / f"keys-{number}.parquet")
        write_scratch(distinct.with_columns(pl.lit(number, pl.Int64).alias(_CHUNK)), keys[-1])
        prefixes.append(distinct.select(_prefix_hash(key)).unique())
        del distinct
    if not keys:
        return pl.DataFrame(), files
    # Read back once every chunk is let go: held while chunks come and go, the keys (millions in a surge)
    # pinned the allocator's pages between them, ~300 MB more than the keys themselves.
    distinct = pl.read_parquet(keys, rechunk=False)
    _refuse_keys_in_two_chunks(distinct, pl.concat(prefixes), key)
    return distinct, files


def _prefix_hash(key: Sequence[str]) -> pl.Expr:
    """The 64-bit hash of a key's first two columns: `plan_chunks` never splits a pair of their values."""
    return pl.struct(key[:2]).hash().alias("prefix")


def _refuse_keys_in_two_chunks(keys: pl.DataFrame, prefixes: pl.DataFrame, key: Sequence[str]) -> None:
    """Raise if a key is in two chunks, exactly and in little memory. `prefixes` holds each chunk's distinct
    prefix hashes: a key in two chunks has its prefix in both, so only keys whose prefix hash is in two
    chunks are compared in full (none when the chunks come from `plan_chunks`, but for a collision). The
    check on the keys' strings took ~900 MB for 3.8M keys; on their full hashes ~300 MB for 6M lab keys."""
    shared = prefixes.filter(pl.col("prefix").is_duplicated()).get_column("prefix")
    if shared.is_empty():
        return
    suspects = keys.filter(_prefix_hash(key).is_in(shared.implode()))
    if suspects.select(key).is_duplicated().any():
        raise ValueError("a key is in two chunks of one merge; its versions would be merged apart")


COMPACT_BELOW_BYTES = 4 * 1024 * 1024
"""Data files a merge reads that are smaller than this are rewritten together when a partition has two or
more: a batch touching every partition leaves new small files in each, and every later merge of keys
spread over the partitions (beds, patients) reads them all, so without this a day of merges read a few
hundred files per partition. Small enough that rewriting them stays a small part of a merge; nightly
maintenance compacts files up to 32 MiB."""
REST_SLICE_BYTES = 64 * 1024**2
"""Unchanged rows of replaced files are written back in slices of about this much memory: rows range from
~400 B (lab results) to ~2 KB (encounters with their fold state), so a slice of a fixed row count that
suited one held a gigabyte of the other."""
_READ_ROWS = 8_192  # rows read from a spill file at a time, to measure a slice as it fills


def _split_current(
    table: Table,
    scope: BooleanExpression,
    lookup: pl.DataFrame,
    key: Sequence[str],
    staged: StagedFiles,
    scratch: Path,
) -> list[DataFile]:
    """Replace the data files `scope` may match that hold a key of the batch (`lookup`, in the table's
    types, with their chunk), and the small ones: their rows of the batch's keys go to their chunk's file
    in `scratch`, their other rows are staged again, together and sorted by key. Returns the replaced files.

    Files whose key bounds hold no batch key are not read (`keys_within_bounds`); the others are first
    read by their key columns only, and then whole, one at a time, if they are replaced. Small files are
    replaced, read whole at once, whenever their partition has two or more (`COMPACT_BELOW_BYTES`). A
    file's rows are matched against the batch keys within its bounds only: a surge's lab batch holds
    millions of keys, and a join with all of them for every file replaced held them all again, hashed."""
    within = keys_within_bounds(table.schema(), lookup, key)
    planned = list(planned_files(table, scope, lambda data_file: not within(data_file).is_empty()))
    small_per_partition = Counter(
        _partition_of(data_file)
        for data_file, _ in planned
        if data_file.file_size_in_bytes < COMPACT_BELOW_BYTES
    )

    def replace(data_file: DataFile, read: FileReader, keys: pl.DataFrame) -> bool:
        if (
            data_file.file_size_in_bytes < COMPACT_BELOW_BYTES
            and small_per_partition[_partition_of(data_file)] > 1
        ):
            return True  # compacted whatever it holds: its keys need not be read
        return not pl.from_arrow(read(key)).join(keys, on=list(key), how="semi", nulls_equal=True).is_empty()

    replaced: list[DataFile] = []
    writers: dict[int | None, pq.ParquetWriter] = {}  # a chunk's current rows; None: the unchanged rows
    try:
        for data_file, read in planned:
            keys = within(data_file)
            if not replace(data_file, read, keys):
                continue  # the file stays as it is
            replaced.append(data_file)
            routed = pl.from_arrow(read(None)).join(keys, on=list(key), how="left", nulls_equal=True)
            hit = pl.col(_CHUNK).is_not_null()
            _spill(writers, scratch, None, as_table_rows(table, routed.filter(~hit).drop(_CHUNK)))
            for (number,), part in routed.filter(hit).partition_by(_CHUNK, as_dict=True).items():
                _spill(writers, scratch, number, part.drop(_CHUNK).to_arrow())
    finally:
        for writer in writers.values():
            writer.close()
    unchanged = scratch / _spill_name(None)
    if unchanged.exists():
        for rows in _slices(unchanged, REST_SLICE_BYTES):
            staged.write_frame(pl.from_arrow(rows).sort(key, nulls_last=True, maintain_order=True))
    return replaced


def _slices(path: Path, size: int) -> Iterator[pa.Table]:
    """The rows of a Parquet file in order, in tables of about `size` bytes of Arrow memory each."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_READ_ROWS):
        pending.append(batch)
        held += batch.nbytes
        if held >= size:
            yield pa.Table.from_batches(pending)
            pending, held = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


def _partition_of(data_file: DataFile) -> tuple[int, Record]:
    return data_file.spec_id, data_file.partition


def _spill_name(number: int | None) -> str:
    return "unchanged.parquet" if number is None else f"current-{number}.parquet"


def _spill(
    writers: dict[int | None, pq.ParquetWriter], scratch: Path, number: int | None, rows: pa.Table
) -> None:
    """Append `rows` to the scratch file of chunk `number` (None: the unchanged rows)."""
    if not len(rows):
        return
    if number not in writers:
        writers[number] = scratch_writer(scratch / _spill_name(number), rows.schema)
    writers[number].write_table(rows.cast(writers[number].schema))


_BOUNDED_TYPES = (StringType, IntegerType, LongType)


def key_bounds_check(schema: Schema, keys: pl.DataFrame, key: Sequence[str]) -> Callable[[DataFile], bool]:
    """Whether a data file may hold one of `keys` (in the table's types), from the file's lower and upper
    bounds of the key columns: a file none of the batch's keys falls within need not be read.

    Order, visit and document numbers grow with time, so a batch's new keys lie above the ranges of the
    files written before (merged rows are written sorted by key): a merge then reads the files its keys
    fall in, not every file of the partitions it touches.
    """
    within = keys_within_bounds(schema, keys, key)
    return lambda data_file: not within(data_file).is_empty()


def keys_within_bounds(
    schema: Schema, keys: pl.DataFrame, key: Sequence[str]
) -> Callable[[DataFile], pl.DataFrame]:
    """The rows of `keys` (in the table's types, any other columns kept) that a data file may hold, from
    its lower and upper bounds of the key columns; a merge matches a file's rows against these only.

    Exact: bounds are inclusive (a truncated string bound still encloses its values), and a key column
    with a null key or without bounds is not used. Cheap when `keys` come sorted by their first usable
    column (as `_stage_merge` gives them): a file's keys are then a slice of them, not a copy.
    """
    fields = [schema.find_field(name) for name in key]
    usable = [
        field
        for field in fields
        if isinstance(field.field_type, _BOUNDED_TYPES) and keys.get_column(field.name).null_count() == 0
    ]
    if not usable or keys.is_empty():
        return lambda _data_file: keys
    name = usable[0].name
    # Sorting already sorted keys again would copy them all (millions in a surge's lab batch).
    in_order = keys.get_column(name).is_sorted()
    ordered = keys.with_columns(pl.col(name).set_sorted()) if in_order else keys.sort(name)
    first = ordered.get_column(name)

    def bounds(data_file: DataFile, field: NestedField) -> tuple[object, object] | None:
        lower = (data_file.lower_bounds or {}).get(field.field_id)
        upper = (data_file.upper_bounds or {}).get(field.field_id)
        if lower is None or upper is None:
            return None
        return from_bytes(field.field_type, lower), from_bytes(field.field_type, upper)

    def within(data_file: DataFile) -> pl.DataFrame:
        candidates = ordered
        if (head := bounds(data_file, usable[0])) is not None:
            start = first.search_sorted(head[0], side="left")
            end = first.search_sorted(head[1], side="right")
            candidates = ordered.slice(start, end - start)
        for field in usable[1:]:
            if candidates.is_empty():
                break
            if (limits := bounds(data_file, field)) is not None:
                lower, upper = (pl.lit(limit) for limit in limits)  # a string alone would name a column
                candidates = candidates.filter(pl.col(field.name).is_between(lower, upper, closed="both"))
        return candidates

    return within


def merge_into(
    table: Table,
    changes: pl.DataFrame,
    *,
    mode: Literal["append", "upsert", "scd2"],
    key: Sequence[str] = (),
    sequence_by: Sequence[str] = (),
    sequence_ranks: Mapping[str, Sequence[str]] | None = None,
    delete_marker: tuple[str, str] | None = None,
    snapshot_properties: Mapping[str, str] | None = None,
    attempts: int = REDO_ATTEMPTS,
) -> Table:
    """Read the rows that may hold the batch's keys, merge the batch, commit; redo all of it if a
    concurrent commit conflicts (`merge_chunks` with one chunk). Returns the refreshed table."""
    return merge_chunks(
        table,
        [lambda: changes],
        mode=mode,
        key=key,
        sequence_by=sequence_by,
        sequence_ranks=sequence_ranks,
        delete_marker=delete_marker,
        snapshot_properties=snapshot_properties,
        attempts=attempts,
    )
