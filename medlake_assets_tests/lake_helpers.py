"""Helpers the integration tests share: a lake in a temp folder, table reads, and manifest comparisons."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from medlake_assets.config import Settings, load_settings
from medlake_assets.defs.resources import LakeResource
from medlake_assets.lake import Lake

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
