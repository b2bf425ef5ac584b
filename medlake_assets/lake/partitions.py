"""A table's partition spec in the metadata's notation (`col`, `bucket(n, col)`, `day(col)`), and the row
filter covering the partitions a set of rows touches: what merges, maintenance and reports agree on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from functools import reduce

import polars as pl
from pyiceberg.expressions import (
    AlwaysFalse,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThan,
    Or,
)
from pyiceberg.table import Table
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    IdentityTransform,
    MonthTransform,
    YearTransform,
)

_PARTITION = re.compile(r"^\s*(?:(?P<fn>\w+)\(\s*(?:(?P<n>\d+)\s*,\s*)?(?P<arg>\w+)\s*\)|(?P<col>\w+))\s*$")


_TRUNCATE = {"hour": "1h", "day": "1d", "month": "1mo", "year": "1y"}


def partition_by_of(table: Table) -> list[str]:
    """The table's partition spec in the metadata's notation: `col`, `bucket(n, col)`, `day(col)`."""
    schema = table.schema()
    names = []
    for field in table.spec().fields:
        column = schema.find_column_name(field.source_id)
        transform = field.transform
        if isinstance(transform, IdentityTransform):
            names.append(column)
        elif isinstance(transform, BucketTransform):
            names.append(f"bucket({transform.num_buckets}, {column})")
        elif isinstance(transform, DayTransform | MonthTransform | YearTransform):
            names.append(f"{transform}({column})")
        else:
            raise ValueError(f"partition field {field.name!r}: transform {transform} is not supported")
    return names


def parse_partition(field: str) -> tuple[str, str]:
    """(transform, source column) of `col`, `bucket(n, col)`, `hour|day|month|year(col)`."""
    match = _PARTITION.match(field)
    if not match:
        raise ValueError(f"partition field {field!r}: expected col, bucket(n, col) or day(col)")
    if match["col"]:
        return "identity", match["col"]
    if match["fn"] == "bucket" and match["n"]:
        return "bucket", match["arg"]
    if match["fn"] in _TRUNCATE and not match["n"]:
        return match["fn"], match["arg"]
    raise ValueError(f"partition field {field!r}: transform {match['fn']!r} is not supported by merges")


def iceberg_literal(value: object) -> object:
    """A value as a pyiceberg expression literal."""
    # pyiceberg converts ISO strings to timestamp/date literals; Python datetimes are not accepted as-is.
    return value.isoformat() if isinstance(value, date | datetime) else value


def touched_partitions(
    changes: pl.DataFrame, partition_by: Sequence[str], *, key: Sequence[str] | None = None
) -> BooleanExpression:
    """A row filter on source columns covering every partition the batch touches.

    Identity: `col IN (batch values)`, so whole data files are dropped by their column bounds and nothing
    is rewritten. hour/day/month/year: the union of the touched periods as ranges, which drop whole files
    the same way. bucket(n, col): `col IN (batch values)`. pyiceberg expressions cannot name a transform,
    so a filter cannot say "bucket 3"; scans and the overwrite project the IN onto the touched buckets
    themselves (with the same murmur3 bucket function as `BucketTransform`), and the overwrite rewrites
    those buckets' files without the matching rows (copy-on-write). Unpartitioned: the key's first column.

    The source columns must be key columns: a key's versions then always live in one partition, so the
    rows read for a batch hold every earlier version of its keys.
    """
    if changes.is_empty():
        return AlwaysFalse()
    fields = [parse_partition(field) for field in partition_by] or ([("identity", key[0])] if key else [])
    if not fields:
        raise ValueError("touched_partitions needs partition_by or a key")
    predicates = []
    for transform, column in fields:
        if key is not None and column not in key:
            raise ValueError(f"partition column {column!r} is not a key column; a key could span partitions")
        values = changes.get_column(column)
        if transform in ("identity", "bucket"):
            literals = [iceberg_literal(value) for value in values.unique().drop_nulls().to_list()]
            predicate: BooleanExpression = In(column, literals) if literals else AlwaysFalse()
        else:
            starts = values.dt.truncate(_TRUNCATE[transform]).unique().drop_nulls().sort()
            ends = starts.dt.offset_by(_TRUNCATE[transform])
            ranges = [
                And(GreaterThanOrEqual(column, start), LessThan(column, end))
                for start, end in zip(
                    map(iceberg_literal, starts.to_list()), map(iceberg_literal, ends.to_list()), strict=True
                )
            ]
            predicate = reduce(Or, ranges) if ranges else AlwaysFalse()
        if values.null_count():
            predicate = Or(predicate, IsNull(column))
        predicates.append(predicate)
    return reduce(And, predicates)
