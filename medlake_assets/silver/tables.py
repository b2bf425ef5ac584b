"""Silver tables: created from the typed schema plus the write mode's columns, partitioned as declared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    YearTransform,
)

from medlake_assets.ingest.bronze import TABLE_PROPERTIES
from medlake_assets.lake.catalog import ensure_table as ensure_catalog_table
from medlake_assets.lake.docs import with_docs
from medlake_assets.lake.partitions import parse_partition

_TRANSFORMS: dict[str, type[Transform]] = {
    "identity": IdentityTransform,
    "day": DayTransform,
    "month": MonthTransform,
    "year": YearTransform,
}


def _transform(field: str) -> tuple[str, Transform]:
    kind, column = parse_partition(field)
    if kind == "bucket":
        buckets = int(field.split("(", 1)[1].split(",", 1)[0])
        return column, BucketTransform(buckets)
    return column, _TRANSFORMS[kind]()


def ensure_table(
    catalog: Catalog,
    identifier: str,
    schema: pa.Schema,
    partition_by: Sequence[str],
    docs: Mapping[str, str] | None = None,
) -> Table:
    """The table from an Arrow schema (all columns optional) and its partition fields (`partition_by` as in
    the metadata), loaded, or created if absent (`tables.catalog.ensure_table`). `docs` (column
    descriptions, `spec.descriptions`) are set at creation and kept up to date."""
    fields = []
    for field in partition_by:
        column, transform = _transform(field)
        fields.append((column, transform, f"{column}_{type(transform).__name__.lower()}"))
    schema = with_docs(pa.schema([field.with_nullable(True) for field in schema]), docs or {})
    return ensure_catalog_table(catalog, identifier, schema, fields, TABLE_PROPERTIES)
