"""Keep `silver.encounters` up to date from `silver.adt_events`, incrementally per landing day.

Each run folds only the NEW events (the day's batches not yet taken in) into the encounter rows they
touch: the rows carry their fold state (`_fold_*` columns, `silver/encounters.py`), so the new events of
a visit are combined with its current row (`combine_encounters`) instead of re-reading its whole history.
A run costs O(new events + touched encounter rows), whatever the size of the day or of the visits'
histories, and gives the rows `fold_events` gives over every event folded so far, in any arrival order.
Re-folding a batch changes nothing, so a run that failed before marking its batches is simply redone.

Bounded memory: the touched visits are cut into chunks of about `EVENTS_PER_CHUNK` new events
(`silver/merge.py: plan_chunks`, whole visits); the new events are read one data file at a time into a
Parquet file per chunk on local disk, then each chunk is folded, combined with the current rows of its
visits and upserted in turn (`merge_chunks` with `combine`), all in one commit.

Tables from before the fold state: rows without it (a null `_fold_last_at`, as every row of a table that
lacked the columns reads) cannot be combined. While any exists, a run folds EVERY event of
`silver.adt_events` (all days) once, replacing those rows (still chunked, in one commit); later runs are
incremental again.

The fold only adds, it never retracts an event. An event changed in place in `silver.adt_events` (e.g.
a day reprocessed under changed metadata) is folded again only if its batch is taken in again, and then
as a later copy of itself: exact while identical, else as for differing copies (`silver/encounters.py`).
The history re-read before the fold state used the latest version whenever a later batch touched the
visit.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In, IsNull
from pyiceberg.table import Table

from medlake_assets.lake import Lake
from medlake_assets.lake.columns import DELETED
from medlake_assets.lake.files import scan_frames, scratch_writer
from medlake_assets.silver.encounters import LAST_AT, combine_encounters, fold_events
from medlake_assets.silver.load import consumer
from medlake_assets.silver.merge import Chunk, ChunkFinder, merge_chunks, plan_chunks
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs

ENCOUNTERS = "silver.encounters"
KEY = ["facility", "visit_number"]
PARTITION_BY = ["bucket(8, visit_number)"]
_VISIT = ["_facility", "visit_number"]
EVENTS_PER_CHUNK = 100_000
"""New events folded and merged at a time (whole visits): half of silver's `CHUNK_ROWS`, because a chunk's
fold (a group-by sorting every component) and its visits' current rows (~2 KB each with their state) hold
several copies of it. A surge's batch of 528k events into 250k visits peaked at 1,035 MB with 200k, 904 MB."""


def load_encounters(lake: Lake, spec: SourceSpec, day: date, *, chunk_rows: int = EVENTS_PER_CHUNK) -> dict:
    """Fold the day's ADT batches that encounters has not taken in yet into `silver.encounters`; returns
    counts for the run's metadata (batches, visits touched, whether every event was folded again)."""
    started = time.perf_counter()
    upstream = consumer(spec.name)
    todo = sorted(
        lake.ledger.processed_batches(upstream, day) - lake.ledger.processed_batches(ENCOUNTERS, day)
    )
    if not todo:
        return {"batches": 0, "visits": 0}
    if not lake.catalog.table_exists(upstream):  # silver published no event yet (all quarantined or held)
        lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
        return {"batches": len(todo), "visits": 0}
    events_table = lake.catalog.load_table(upstream)
    now = pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("_ingested_at")
    empty_history = pl.from_arrow(events_table.schema().as_arrow().empty_table())
    schema = fold_events(empty_history).with_columns(now, pl.lit(False).alias(DELETED)).to_arrow().schema
    # Adds the fold columns to a table from before them (its rows then read them as null).
    table = ensure_table(lake.catalog, ENCOUNTERS, schema, PARTITION_BY, table_column_docs(spec, ENCOUNTERS))
    full = _has_rows_without_state(table)
    new_events = AlwaysTrue() if full else And(EqualTo("_landing_day", day.isoformat()), In("_batch", todo))
    counts = [
        frame.drop_nulls("visit_number").group_by(_VISIT).agg(pl.len().alias("rows"))
        for frame in scan_frames(events_table, new_events, _VISIT)
    ]
    visits = pl.concat(counts).group_by(_VISIT).agg(pl.col("rows").sum()) if counts else pl.DataFrame()
    if visits.is_empty():
        lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
        return {"batches": len(todo), "visits": 0}
    plan = plan_chunks(visits.rename({"_facility": "facility"}), KEY, chunk_rows).rename(
        {"facility": "_facility"}
    )

    def combine(current: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
        # Rows without state exist only in a full run, which folds their whole history anew.
        stateful = current.filter(pl.col(LAST_AT).is_not_null()) if LAST_AT in current.columns else None
        combined = batch if stateful is None else combine_encounters(stateful, batch)
        # Stamped now: the upsert's tie on `last_event_ts` (a late event older than the last) goes to it.
        return combined.with_columns(now)

    with tempfile.TemporaryDirectory(prefix="medlake-encounters-") as scratch:
        read_started = time.perf_counter()
        paths = _spill_events(events_table, new_events, plan, Path(scratch))
        merge_started = time.perf_counter()

        def folded(path: Path) -> Chunk:
            return lambda: fold_events(pl.read_parquet(path))

        merge_chunks(
            table,
            [folded(path) for path in paths],
            mode="upsert",
            key=KEY,
            sequence_by=["last_event_ts"],
            combine=combine,
            snapshot_properties={"medlake.adt_batches": ",".join(todo)[:4000]},
        )
    lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
    return {
        "batches": len(todo),
        "visits": visits.height,
        "events": int(visits.get_column("rows").sum()),
        "full_history": full,
        "seconds": round(time.perf_counter() - started, 3),
        "read_seconds": round(merge_started - read_started, 3),  # the new events, spilled per chunk
        "merge_seconds": round(time.perf_counter() - merge_started, 3),  # fold, combine, copy-on-write
    }


def _has_rows_without_state(table: Table) -> bool:
    """Whether any encounter row lacks its fold state: data files whose `_fold_last_at` null count is 0
    are pruned by their metrics, so this reads manifests only, once every row has its state."""
    return any(True for _ in table.scan(row_filter=IsNull(LAST_AT), selected_fields=(LAST_AT,)).plan_files())


def _spill_events(
    events_table: Table, row_filter: BooleanExpression, plan: pl.DataFrame, folder: Path
) -> list[Path]:
    """The events matching `row_filter` of the planned visits, into one Parquet file per chunk."""
    writers: dict[int, pq.ParquetWriter] = {}
    finder = ChunkFinder(".".join(events_table.name()), plan, _VISIT)
    try:
        for frame in scan_frames(events_table, row_filter):
            events = frame.drop_nulls("visit_number")  # an event without a visit makes no encounter
            events = events.with_columns(chunk=finder.chunks(events.select(_VISIT)))
            for (number,), part in events.partition_by("chunk", as_dict=True).items():
                rows = part.drop("chunk").to_arrow()
                if number not in writers:
                    writers[number] = scratch_writer(folder / f"events-{number:05d}.parquet", rows.schema)
                writers[number].write_table(rows.cast(writers[number].schema))
    finally:
        for writer in writers.values():
            writer.close()
    finder.check()
    return [folder / f"events-{number:05d}.parquet" for number in sorted(writers)]
