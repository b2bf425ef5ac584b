"""Bronze and record-quarantine Iceberg tables: schemas, creation and the idempotent batch commit."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, In
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    DateType,
    IcebergType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.commits import BATCH_PROPERTY, CONFLICTS, REDO_ATTEMPTS, wait_before_redo
from medlake_assets.lake.manifests import MERGE_PROPERTIES
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.descriptions import table_column_docs

LINEAGE: list[tuple[str, IcebergType]] = [
    ("_archive", StringType()),
    ("_member", StringType()),
    ("_record", LongType()),
    ("_facility", StringType()),
    ("_landing_day", DateType()),
    ("_ingested_at", TimestamptzType()),
    ("_batch", StringType()),
]
QUARANTINE_FIELDS: list[tuple[str, IcebergType]] = [
    ("_archive", StringType()),
    ("_member", StringType()),
    ("_record", LongType()),
    ("_line", LongType()),
    ("_facility", StringType()),
    ("_landing_day", DateType()),
    ("_ingested_at", TimestamptzType()),
    ("_batch", StringType()),
    ("stage", StringType()),
    ("rule", StringType()),
    ("reason", StringType()),
    ("raw", StringType()),
]
ALL_ROWS = AlwaysTrue()
TABLE_PROPERTIES = {
    "write.parquet.compression-codec": "zstd",
    # Full (untruncated) bounds on `_archive` let an overwrite skip files that cannot hold a batch's archives;
    # on `_batch`, a run's scan of its batches skips the day's other files (batch ids share their first 16
    # characters, source and day, so the default truncated bounds matched every file of the day).
    "write.metadata.metrics.column._archive": "full",
    "write.metadata.metrics.column._batch": "full",
    "commit.retry.num-retries": "10",
    **MERGE_PROPERTIES,
}


def _schema(fields: Sequence[tuple[str, IcebergType]], docs: Mapping[str, str] | None = None) -> Schema:
    docs = docs or {}
    return Schema(
        *[
            NestedField(field_id=i, name=name, field_type=kind, required=False, doc=docs.get(name))
            for i, (name, kind) in enumerate(fields, 1)
        ]
    )


def bronze_schema(spec: SourceSpec) -> Schema:
    """Declared columns as received (strings), then the lineage columns, with their descriptions."""
    columns = [(name, StringType()) for name in spec.column_names()] + LINEAGE
    return _schema(columns, table_column_docs(spec, f"bronze.{spec.name}"))


def quarantine_schema(spec: SourceSpec | None = None) -> Schema:
    docs = table_column_docs(spec, f"quarantine.{spec.name}") if spec is not None else None
    return _schema(QUARANTINE_FIELDS, docs)


# Bronze and quarantine rows are partitioned by their landing day (identity).
_BY_LANDING_DAY = [("_landing_day", IdentityTransform(), "_landing_day")]


def bronze_table(catalog: Catalog, spec: SourceSpec) -> Table:
    schema = bronze_schema(spec)
    return ensure_table(catalog, f"bronze.{spec.name}", schema, _BY_LANDING_DAY, TABLE_PROPERTIES)


def quarantine_table(catalog: Catalog, spec: SourceSpec) -> Table:
    return ensure_table(
        catalog, f"quarantine.{spec.name}", quarantine_schema(spec), _BY_LANDING_DAY, TABLE_PROPERTIES
    )


def arrow_schema(table: Table) -> pa.Schema:
    return table.schema().as_arrow()


def batch_committed(table: Table, batch_id: str) -> bool:
    """Whether a snapshot already carries the batch (a crash after the commit, before the ledger)."""
    return any(
        snapshot.summary[BATCH_PROPERTY] == batch_id for snapshot in table.snapshots() if snapshot.summary
    )


def overwrite(table: Table, rows: pa.Table, overwrite_filter, properties: dict[str, str]) -> None:
    """`table.overwrite` without pyiceberg's warning when the filter matches nothing (a first load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        table.overwrite(rows, overwrite_filter=overwrite_filter, snapshot_properties=properties)


def replace_rows(
    table: Table,
    rows: pa.Table,
    row_filter: BooleanExpression,
    properties: dict[str, str],
    attempts: int = REDO_ATTEMPTS,
) -> None:
    """Replace the rows matching `row_filter` with `rows` in one commit, redone on fresh metadata on conflict.

    pyiceberg retries a commit that lost a race itself, but keeps the files its delete planned first and
    raises `ValidationException` when a concurrent commit added files the filter might match (min/max
    bounds, so another batch's interleaved archive keys count). Redoing the whole overwrite on the
    refreshed table is safe because the rows this filter selects belong to this writer alone.
    """
    for attempt in range(attempts):
        try:
            overwrite(table, rows, row_filter, properties)
            return
        except CONFLICTS:
            if attempt == attempts - 1:
                raise
            wait_before_redo(attempt)
            table.refresh()


def commit_batch(
    table: Table,
    rows: pa.Table,
    *,
    archives: Sequence[str],
    batch_id: str,
    replace: bool,
    scope: BooleanExpression = ALL_ROWS,
) -> None:
    """Write a batch's rows in one Iceberg commit.

    `replace` overwrites exactly the rows of `archives` within `scope` (a retry, a backfill, or a crash
    after an earlier commit); otherwise the rows are appended, which skips reading existing files on the
    common first load. Concurrent commits of other batches to the same table all land: appends are
    rebased by pyiceberg's own commit retry, replaces by `replace_rows`.
    """
    properties = {BATCH_PROPERTY: batch_id}
    if replace:
        replace_rows(table, rows, And(scope, In("_archive", list(archives))), properties)
        return
    for attempt in range(REDO_ATTEMPTS):
        try:
            if len(rows):
                table.append(rows, snapshot_properties=properties)
            return
        except CommitFailedException:
            # pyiceberg retried `commit.retry.num-retries` times already; this guards the exhausted case.
            if attempt == REDO_ATTEMPTS - 1:
                raise
            wait_before_redo(attempt)
            table.refresh()
