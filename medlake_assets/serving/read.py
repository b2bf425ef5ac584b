"""Reads for ML and notebooks: `read("silver.lab_results", columns=[...], where=..., as_of=...,
customer=...)`.

Column selection and the row filter go to pyiceberg's scan, which prunes data files by partition and
column statistics before reading, and reads only the selected columns. With `customer`, the filter also
keeps only that customer's facilities (`serving.tenancy`), in the same pushed-down scan. The result is
Arrow, with bridges to Polars, pandas (if installed) and `tf.data` (the optional `medlake[tf]` extra).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.schema import Schema
from pyiceberg.table import DataScan, Snapshot
from pyiceberg.table import Table as IcebergTable

from medlake_assets.lake import Lake
from medlake_assets.serving.catalog_info import (
    AsOf,
    AsOfError,
    existed_at,
    parse_as_of,
    resolve_as_of,
    snapshot_at,
)
from medlake_assets.serving.deid import DEID_SCHEMA
from medlake_assets.serving.tenancy import customer_facilities, facility_filter
from medlake_assets.spec.access import load_access

if TYPE_CHECKING:
    import pandas
    import tensorflow


@dataclass(frozen=True)
class ReadResult:
    """The rows a read returned, as Arrow, and the snapshot they came from (None: the table was empty)."""

    arrow: pa.Table
    table: str
    snapshot_id: int | None

    @property
    def num_rows(self) -> int:
        return self.arrow.num_rows

    @property
    def column_names(self) -> list[str]:
        return self.arrow.column_names

    def to_arrow(self) -> pa.Table:
        return self.arrow

    def to_polars(self) -> pl.DataFrame:
        return pl.from_arrow(self.arrow)

    def to_pandas(self) -> pandas.DataFrame:
        try:
            import pandas  # noqa: F401  (pyarrow's conversion needs it importable)
        except ImportError:
            raise ImportError(
                "ReadResult.to_pandas needs pandas, which is not installed: pip install pandas "
                "(or use .to_polars() / .to_arrow())"
            ) from None
        return self.arrow.to_pandas()

    def to_tf_dataset(self, batch_size: int = 256, label: str | None = None) -> tensorflow.data.Dataset:
        """A `tf.data.Dataset` of batches: dicts of column tensors, or `(features, label)` with `label`.

        Batches stream from the Arrow record batches, so the table is never copied into one graph
        constant. Dates and timestamps become int64 (days / microseconds since the epoch); decimals
        become float64. Columns with nulls are refused: fill or filter them first.
        """
        try:
            import tensorflow as tf
        except ImportError:
            raise ImportError(
                "ReadResult.to_tf_dataset needs TensorFlow, an optional extra: pip install 'medlake[tf]'"
            ) from None
        arrow = tf_ready(self.arrow)
        if label is not None and label not in arrow.column_names:
            raise ValueError(f"label column {label!r} is not among the columns read: {arrow.column_names}")
        kinds = {field.name: tf_kind(field.type) for field in arrow.schema}
        signature = {
            name: tf.TensorSpec(shape=(None,), dtype=tf.string if kind == "string" else tf.as_dtype(kind))
            for name, kind in kinds.items()
        }

        slices = list(tf_slices(arrow, batch_size))  # zero-copy views; a bad batch_size fails now

        def batches() -> Iterator[Any]:
            for batch in slices:
                features = {name: batch.column(name).to_numpy() for name in batch.column_names}
                yield (features, features.pop(label)) if label is not None else features

        if label is not None:
            label_spec = signature.pop(label)
            output_signature: Any = (signature, label_spec)
        else:
            output_signature = signature
        dataset = tf.data.Dataset.from_generator(batches, output_signature=output_signature)
        # The batch count is known: declared, Keras sizes its epochs instead of warning that the input
        # "ran out of data" after the first one.
        return dataset.apply(tf.data.experimental.assert_cardinality(len(slices)))


def tf_kind(arrow_type: pa.DataType) -> str:
    """The TensorFlow dtype name a column of `tf_ready` output becomes."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary)
    if any(is_binary(arrow_type) for is_binary in binary):
        return "string"  # tf.string holds bytes; Iceberg binary columns arrive as large_binary
    # Arrow names integers and bool as NumPy/TensorFlow do; only the floats differ.
    name = str(arrow_type)
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(name, name)


def tf_ready(arrow: pa.Table) -> pa.Table:
    """Columns cast to types TensorFlow takes; a column with nulls or a nested type is refused by name."""
    columns = []
    for field, column in zip(arrow.schema, arrow.columns, strict=True):
        if column.null_count:
            raise ValueError(
                f"column {field.name!r} has {column.null_count} nulls: fill or filter them first"
            )
        kind = field.type
        if pa.types.is_date(kind):
            column = column.cast(pa.int32()).cast(pa.int64())
        elif pa.types.is_timestamp(kind):
            column = column.cast(pa.timestamp("us", tz=kind.tz)).cast(pa.int64())
        elif pa.types.is_decimal(kind):
            column = column.cast(pa.float64())
        elif pa.types.is_nested(kind):
            raise ValueError(
                f"column {field.name!r} has nested type {kind}, which the tf bridge does not take"
            )
        columns.append(column)
    return pa.table(columns, names=arrow.column_names)


def tf_slices(arrow: pa.Table, batch_size: int) -> Iterator[pa.Table]:
    """Zero-copy slices of `batch_size` rows (the last may be shorter), exact across Arrow chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, arrow.num_rows, batch_size):
        yield arrow.slice(start, batch_size)


@dataclass(frozen=True)
class PlannedRead:
    """A read before it runs: the snapshot and schema it reads, and its scan (None: no snapshot then)."""

    snapshot: Snapshot | None
    schema: Schema
    scan: DataScan | None


def plan_read(
    table: str,
    columns: Sequence[str] | None = None,
    where: str | BooleanExpression | None = None,
    as_of: AsOf | None = None,
    lake: Lake | None = None,
    customer: str | None = None,
) -> PlannedRead:
    """The scan `read` runs, with the same arguments; `scan.plan_files()` shows the files it would open."""
    if table.startswith(f"{DEID_SCHEMA}."):
        # The deid views exist only in DuckDB (tokens and shifts are computed there): say where to look.
        raise ValueError(
            f"{table} is a DuckDB view, not an Iceberg table: read it with "
            f"medlake_assets.serving.sql.connect(lake).sql('SELECT ... FROM {table}').arrow()"
        )
    if lake is None:
        from medlake_assets.lake.settings import load_settings

        lake = Lake(load_settings())
    # An unknown customer fails before any table is opened.
    facilities = (
        None if customer is None else customer_facilities(load_access(lake.settings.access_dir), customer)
    )
    iceberg_table = lake.catalog.load_table(table)
    if as_of is None:
        snapshot = iceberg_table.current_snapshot()
    else:
        own = {table: iceberg_table} if _is_id_of(iceberg_table, as_of) else None
        point = resolve_as_of(lake.catalog, as_of, own)
        if not existed_at(iceberg_table, point):
            raise AsOfError(f"table {table} did not exist yet as of {as_of}")
        snapshot = snapshot_at(table, iceberg_table, point)
    schema = _schema_at(iceberg_table, snapshot)
    row_filter: str | BooleanExpression = where if where is not None else AlwaysTrue()
    # Checked even for a table with no rows yet: a table that cannot be scoped is refused, never empty.
    scope = None if facilities is None else facility_filter(table, schema.column_names, facilities)
    if snapshot is None:
        return PlannedRead(None, schema, None)
    scan = iceberg_table.scan(
        row_filter=row_filter,
        selected_fields=tuple(columns) if columns is not None else ("*",),
        snapshot_id=snapshot.snapshot_id,
    )
    return PlannedRead(snapshot, schema, scan if scope is None else scan.filter(scope))


def read(
    table: str,
    columns: Sequence[str] | None = None,
    where: str | BooleanExpression | None = None,
    as_of: AsOf | None = None,
    lake: Lake | None = None,
    customer: str | None = None,
) -> ReadResult:
    """Rows of `<namespace>.<table>`, filtered and projected in the scan, optionally as of a past moment.

    `where` is a pyiceberg expression or a string pyiceberg parses (`"facility = 'F001' and value > 2"`);
    `as_of` is a snapshot id or an ISO timestamp / datetime (naive means UTC); `customer` (an id from
    `metadata/access/`) keeps only rows of that customer's facilities, and refuses a table that has no
    facility column (`serving.tenancy.TenancyError`). `lake` defaults to the one the `MEDLAKE_*`
    environment describes.
    """
    planned = plan_read(table, columns, where, as_of, lake, customer)
    if planned.scan is None:
        # No data yet at that moment: an empty result with the requested columns.
        empty = planned.schema.as_arrow().empty_table()
        return ReadResult(empty if columns is None else empty.select(list(columns)), table, None)
    arrow = planned.scan.to_arrow()
    # pyiceberg returns the table's column order; keep the order the caller asked for.
    snapshot_id = planned.snapshot.snapshot_id if planned.snapshot else None
    return ReadResult(arrow if columns is None else arrow.select(list(columns)), table, snapshot_id)


def _schema_at(iceberg_table: IcebergTable, snapshot: Snapshot | None) -> Schema:
    """The schema the table had at `snapshot` (the one a scan of that snapshot reads with)."""
    if snapshot is not None and snapshot.schema_id is not None:
        for schema in iceberg_table.metadata.schemas:
            if schema.schema_id == snapshot.schema_id:
                return schema
    return iceberg_table.schema()


def _is_id_of(iceberg_table: IcebergTable, as_of: AsOf) -> bool:
    """Whether `as_of` is a snapshot id of this very table (then no other table needs loading)."""
    parsed = parse_as_of(as_of)
    return isinstance(parsed, int) and iceberg_table.snapshot_by_id(parsed) is not None
