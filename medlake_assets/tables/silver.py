"""Silver tables: created from the typed schema plus the write mode's columns, partitioned as declared."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, TableAlreadyExistsError
from pyiceberg.table import Table
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    YearTransform,
)

from medlake_assets.tables.bronze import TABLE_PROPERTIES
from medlake_assets.tables.docs import apply_column_docs, with_docs
from medlake_assets.tables.merge import parse_partition

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
    """Create the table from an Arrow schema (all columns optional) and its partition spec, if absent.

    A column added to the metadata later is added to the table (older rows read it as null). `docs`
    (column descriptions, `spec.descriptions`) are set at creation and kept up to date.
    """
    schema = with_docs(pa.schema([field.with_nullable(True) for field in schema]), docs or {})
    if not catalog.table_exists(identifier):
        # Table and partition spec in one commit: a concurrent writer never sees it unpartitioned.
        create = catalog.create_table_transaction(identifier, schema=schema, properties=TABLE_PROPERTIES)
        if partition_by:
            with create.update_spec() as update:
                for field in partition_by:
                    column, transform = _transform(field)
                    update.add_field(column, transform, f"{column}_{type(transform).__name__.lower()}")
        # Another writer created it first (with the same schema and spec): pyiceberg reports that as either.
        with contextlib.suppress(TableAlreadyExistsError, CommitFailedException):
            create.commit_transaction()
        return catalog.load_table(identifier)
    table = catalog.load_table(identifier)
    missing = [name for name in schema.names if name not in table.schema().column_names]
    if missing:
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(identifier)
    if docs and apply_column_docs(table, docs):
        table = catalog.load_table(identifier)
    return table
