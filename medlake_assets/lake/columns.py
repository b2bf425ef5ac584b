"""The columns medlake adds to its tables: lineage (where each row came from) and what the silver write
modes add (tombstones, SCD2 validity).
"""

from __future__ import annotations

from pyiceberg.types import BooleanType, IcebergType, TimestamptzType

LINEAGE_COLUMNS = ("_archive", "_member", "_record", "_facility", "_landing_day", "_ingested_at", "_batch")
# Ties on the full sequence go to the later arrival; these columns define "later", in this order.
TIE_BREAK = ("_ingested_at", "_batch", "_archive", "_member", "_record")
DELETED = "_deleted"
VALID_FROM, VALID_TO, IS_CURRENT = "_valid_from", "_valid_to", "_is_current"
SCD2_COLUMNS = (VALID_FROM, VALID_TO, IS_CURRENT)
# Columns each mode adds after the declared and lineage columns (for the silver table's schema).
MERGE_COLUMNS: dict[str, list[tuple[str, IcebergType]]] = {
    "append": [],
    "upsert": [(DELETED, BooleanType())],
    "scd2": [
        (DELETED, BooleanType()),
        (VALID_FROM, TimestamptzType()),
        (VALID_TO, TimestamptzType()),
        (IS_CURRENT, BooleanType()),
    ],
}
