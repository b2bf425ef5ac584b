"""Keep `silver.encounters` up to date from `silver.adt_events`, incrementally per landing day.

The derivation is a pure function of a visit's whole event history, so out-of-order arrivals across
batches and days are always right: for the visits a new ADT batch touches, every event of those visits is
read back from silver (append-only) and their encounters are recomputed and upserted.
"""

from __future__ import annotations

import time
from datetime import UTC, date, datetime

import polars as pl
from pyiceberg.expressions import And, EqualTo, In

from medlake_assets.lake import Lake
from medlake_assets.silver.encounters import derive_encounters
from medlake_assets.silver.load import consumer
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs
from medlake_assets.tables.merge import DELETED, merge_into
from medlake_assets.tables.silver import ensure_table

ENCOUNTERS = "silver.encounters"
KEY = ["facility", "visit_number"]
PARTITION_BY = ["bucket(8, visit_number)"]


def load_encounters(lake: Lake, spec: SourceSpec, day: date) -> dict:
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
    new = pl.from_arrow(
        events_table.scan(
            row_filter=And(EqualTo("_landing_day", day.isoformat()), In("_batch", todo)),
            selected_fields=("_facility", "visit_number"),
        ).to_arrow()
    )
    visits = new.drop_nulls("visit_number").unique()
    if visits.is_empty():
        lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
        return {"batches": len(todo), "visits": 0}
    history = pl.from_arrow(
        events_table.scan(
            row_filter=In("visit_number", visits.get_column("visit_number").to_list())
        ).to_arrow()
    ).join(visits, on=["_facility", "visit_number"], how="semi")
    encounters = derive_encounters(history).with_columns(
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("_ingested_at")
    )
    schema = encounters.with_columns(pl.lit(False).alias(DELETED)).to_arrow().schema
    table = ensure_table(lake.catalog, ENCOUNTERS, schema, PARTITION_BY, table_column_docs(spec, ENCOUNTERS))
    merge_into(
        table,
        encounters,
        mode="upsert",
        key=KEY,
        sequence_by=["last_event_ts"],
        snapshot_properties={"medlake.adt_batches": ",".join(todo)[:4000]},
    )
    lake.ledger.mark_processed(ENCOUNTERS, spec.name, day, todo)
    return {
        "batches": len(todo),
        "visits": encounters.height,
        "seconds": round(time.perf_counter() - started, 3),
    }
