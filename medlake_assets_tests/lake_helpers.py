"""Helpers the integration tests share: a lake in a temp folder, table reads, and manifest comparisons."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import select, update

from medlake_assets.defs.resources import LakeResource
from medlake_assets.ingest.batch import load_batch
from medlake_assets.ingest.landing import day_prefix, landed_days, register_landed
from medlake_assets.lake import Lake
from medlake_assets.lake.ledger import LandedFile, batch_id_for, files
from medlake_assets.lake.settings import Settings, load_settings
from medlake_assets.silver.encounters_load import load_encounters
from medlake_assets.silver.load import load_silver

DAY = date(2026, 11, 20)


def local_settings(home: Path, **overrides: str) -> Settings:
    return load_settings({"MEDLAKE_HOME": str(home), **overrides})


def open_lake(settings: Settings) -> Lake:
    return LakeResource.from_settings(settings).lake()


def table_rows(lake: Lake, identifier: str) -> pa.Table:
    lake.catalog.load_table(identifier)
    return lake.catalog.load_table(identifier).scan().to_arrow()


def lineage_keys(rows: pa.Table) -> list[tuple]:
    """(archive, member, record) of every row, sorted: equal lists mean the same records, no duplicates."""
    return sorted(
        zip(*(rows.column(name).to_pylist() for name in ("_archive", "_member", "_record")), strict=True)
    )


def ledger_by_key(lake: Lake) -> dict[str, dict]:
    from sqlalchemy import text

    with lake.ledger.engine.connect() as connection:
        rows = connection.execute(text(f"SELECT * FROM {lake.ledger.table_name}")).mappings().all()
    return {row["key"]: dict(row) for row in rows}


def count_where(rows: pa.Table, column: str, value: str) -> int:
    return int(pc.sum(pc.equal(rows.column(column), value)).as_py() or 0)


def load_landed(lake: Lake) -> int:
    """Load every archive in the landing zone not loaded yet into bronze, silver and `silver.encounters`
    with the library calls the Dagster assets make (register, `load_batch`, `load_silver`,
    `load_encounters`), one batch per source and landing day; returns the batches loaded.

    No Dagster runs: serving tests that need a real lake over many landing days get one in seconds (the
    pipeline's orchestration is tested in `defs/`).
    """
    specs = list(lake.sources.values())
    batches = 0
    for spec in specs:
        for day in landed_days(lake.store, spec.name):
            register_landed(lake.store, lake.ledger, specs, [day_prefix(spec.name, day)])
            pending = [row.id for row in lake.ledger.day_files(spec.name, day) if row.status == "pending"]
            if not pending:
                continue
            batch_id = batch_id_for(spec.name, day, pending)
            lake.ledger.assign_batch(pending, batch_id)
            load_batch(lake, spec, batch_id, lake.ledger.batch_files(batch_id))
            load_silver(lake, spec, day)
            if "encounters" in spec.derived:
                load_encounters(lake, spec, day)
            batches += 1
    return batches


def land_history(
    lake: Lake, facility: str, last: datetime, deliveries: int, source: str = "lab_results"
) -> None:
    """Register an hourly feed's files in the ledger, the last one `last` (as the landing sensor would)."""
    for n in range(deliveries):
        at = last - timedelta(hours=n)
        key = f"landing/{source}/{at:%Y/%m/%d}/{facility}/{facility}_{at:%H%M}.csv.gz"
        lake.ledger.register([LandedFile("local", key, "etag", 10, source, facility, at.date())])
        with lake.ledger.writer.begin() as connection:
            connection.execute(update(files).where(files.c.key == key).values(first_seen_at=at))


def time_passes(lake: Lake, minutes: int, facility: str | None = None) -> None:
    """Move recorded arrivals back, as if `minutes` had passed with nothing new landing."""
    condition = [files.c.facility == facility] if facility else []
    with lake.ledger.writer.begin() as connection:
        rows = connection.execute(select(files.c.id, files.c.first_seen_at).where(*condition)).all()
        for file_id, seen in rows:
            earlier = seen.replace(tzinfo=seen.tzinfo or UTC) - timedelta(minutes=minutes)
            connection.execute(update(files).where(files.c.id == file_id).values(first_seen_at=earlier))
