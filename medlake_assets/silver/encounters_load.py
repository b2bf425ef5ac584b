"""Keep `silver.encounters` up to date from `silver.adt_events`, incrementally per landing day.

The derivation is a pure function of a visit's whole event history, so out-of-order arrivals across
batches and days are always right: for the visits a new ADT batch touches, every event of those visits is
read back from silver (append-only) and their encounters are recomputed and upserted.

Bounded memory: the touched visits are cut into chunks of about `CHUNK_ROWS` new events
(`tables/merge.py: plan_chunks`, whole visits, filters that never overlap); their histories are read one
data file at a time into a Parquet file per chunk on local disk, then each chunk is derived and merged in
turn (`merge_chunks`), all in one commit.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from pyiceberg.expressions import And, EqualTo, In

from medlake_assets.lake import Lake
from medlake_assets.lake.columns import DELETED
from medlake_assets.lake.files import scan_frames
from medlake_assets.silver.encounters import derive_encounters
from medlake_assets.silver.load import CHUNK_ROWS, consumer
from medlake_assets.silver.merge import Chunk, merge_chunks, plan_chunks
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs

ENCOUNTERS = "silver.encounters"
KEY = ["facility", "visit_number"]
PARTITION_BY = ["bucket(8, visit_number)"]
_VISIT = ["_facility", "visit_number"]


def load_encounters(lake: Lake, spec: SourceSpec, day: date, *, chunk_rows: int = CHUNK_ROWS) -> dict:
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
    new_events = And(EqualTo("_landing_day", day.isoformat()), In("_batch", todo))
    counts = [
        frame.drop_nulls("visit_number").group_by(_VISIT).agg(pl.len().alias("rows"))
        for frame in scan_frames(events_table, new_events, _VISIT)
    ]
    if not counts:
        lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
        return {"batches": len(todo), "visits": 0}
    visits = pl.concat(counts).group_by(_VISIT).agg(pl.col("rows").sum())
    if visits.is_empty():
        lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
        return {"batches": len(todo), "visits": 0}
    plan = plan_chunks(visits.rename({"_facility": "facility"}), KEY, chunk_rows).rename(
        {"facility": "_facility"}
    )
    now = pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("_ingested_at")
    empty_history = pl.from_arrow(events_table.schema().as_arrow().empty_table())
    schema = (
        derive_encounters(empty_history).with_columns(now, pl.lit(False).alias(DELETED)).to_arrow().schema
    )
    table = ensure_table(lake.catalog, ENCOUNTERS, schema, PARTITION_BY, table_column_docs(spec, ENCOUNTERS))
    with tempfile.TemporaryDirectory(prefix="medlake-encounters-") as scratch:
        paths = _spill_histories(events_table, plan, Path(scratch))

        def derived(path: Path) -> Chunk:
            return lambda: derive_encounters(pl.read_parquet(path)).with_columns(now)

        merge_chunks(
            table,
            [derived(path) for path in paths],
            mode="upsert",
            key=KEY,
            sequence_by=["last_event_ts"],
            snapshot_properties={"medlake.adt_batches": ",".join(todo)[:4000]},
        )
    lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
    return {
        "batches": len(todo),
        "visits": visits.height,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _spill_histories(events_table, plan: pl.DataFrame, folder: Path) -> list[Path]:
    """Every event of the planned visits, whatever its day, into one Parquet file per chunk."""
    writers: dict[int, pq.ParquetWriter] = {}
    numbers = plan.select(*_VISIT, "chunk")
    history = In("visit_number", numbers.get_column("visit_number").unique().to_list())
    try:
        for frame in scan_frames(events_table, history):
            events = frame.join(
                numbers, on=_VISIT, how="inner"
            )  # a visit number of another facility: not ours
            for (number,), part in events.partition_by("chunk", as_dict=True).items():
                rows = part.drop("chunk").to_arrow()
                if number not in writers:
                    writers[number] = pq.ParquetWriter(folder / f"history-{number:05d}.parquet", rows.schema)
                writers[number].write_table(rows.cast(writers[number].schema))
    finally:
        for writer in writers.values():
            writer.close()
    return [folder / f"history-{number:05d}.parquet" for number in sorted(writers)]
