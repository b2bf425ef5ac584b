"""A small real lake for the serving tests, written directly with pyiceberg (seeded synthetic lab rows).

`silver.lab_results` (partitioned by facility) gets two commits: an append of every row, then an
overwrite of facility F1's rows with new values. `bronze.late_feed` is created after the first commit,
`quarantine.empty_feed` has no snapshot at all.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
from pyiceberg.expressions import EqualTo
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import DateType, DoubleType, LongType, NestedField, StringType

from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings

LABS = "silver.lab_results"
LATE = "bronze.late_feed"
EMPTY = "quarantine.empty_feed"
FACILITIES = ("F1", "F2", "F3")
SCHEMA = Schema(
    NestedField(1, "facility", StringType(), required=True),
    NestedField(2, "patient_id", StringType(), required=True),
    NestedField(3, "test_code", StringType(), required=True),
    NestedField(4, "value", DoubleType(), required=True),
    NestedField(5, "resulted_on", DateType(), required=True),
    NestedField(6, "_record", LongType(), required=True),
)
ARROW_SCHEMA = SCHEMA.as_arrow()


@dataclass(frozen=True)
class ServingLake:
    lake: Lake
    first_rows: list[dict]  # rows as of the first snapshot
    current_rows: list[dict]
    first_snapshot_id: int
    first_timestamp_ms: int
    current_snapshot_id: int


def lab_rows(seed: int, count: int, facility: str | None = None, start: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "facility": facility or rng.choice(FACILITIES),
            "patient_id": f"P{rng.randrange(10_000):05d}",
            "test_code": rng.choice(("GLU", "HGB", "K", "NA")),
            "value": round(rng.uniform(0, 20), 1),
            "resulted_on": date(2026, 11, 1) + timedelta(days=rng.randrange(20)),
            "_record": start + ordinal,
        }
        for ordinal in range(count)
    ]


def _after(timestamp_ms: int) -> None:
    """Wait until the clock has passed `timestamp_ms`, so the next commit gets a later timestamp."""
    while time.time() * 1000 <= timestamp_ms:
        time.sleep(0.002)


def build_serving_lake(home: Path) -> ServingLake:
    lake = Lake(load_settings({"MEDLAKE_HOME": str(home)}))
    assert lake.ledger is not None  # opening the ledger creates the table `meta.files` reads
    catalog = lake.catalog
    spec = PartitionSpec(PartitionField(1, 1000, IdentityTransform(), "facility"))
    labs = catalog.create_table(LABS, schema=SCHEMA, partition_spec=spec)
    catalog.create_table(EMPTY, schema=SCHEMA)
    first_rows = lab_rows(seed=11, count=60)
    labs.append(pa.Table.from_pylist(first_rows, schema=ARROW_SCHEMA))
    first = labs.current_snapshot()
    _after(first.timestamp_ms)
    late = catalog.create_table(LATE, schema=SCHEMA)
    late.append(pa.Table.from_pylist(lab_rows(seed=12, count=5), schema=ARROW_SCHEMA))
    replacement = lab_rows(seed=13, count=7, facility="F1", start=1000)
    labs.overwrite(
        pa.Table.from_pylist(replacement, schema=ARROW_SCHEMA), overwrite_filter=EqualTo("facility", "F1")
    )
    current_rows = [row for row in first_rows if row["facility"] != "F1"] + replacement
    return ServingLake(
        lake=lake,
        first_rows=first_rows,
        current_rows=current_rows,
        first_snapshot_id=first.snapshot_id,
        first_timestamp_ms=first.timestamp_ms,
        current_snapshot_id=labs.current_snapshot().snapshot_id,
    )


def sorted_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda row: row["_record"])
