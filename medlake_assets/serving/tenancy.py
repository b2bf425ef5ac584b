"""A customer's rows outside the SQL server: `read(..., customer=...)` and the report pages per customer.

A customer sees only rows of its facilities (`metadata/access/*.yaml`). A relation is scoped by its
facility column (`spec.access.facility_column`: `_facility`, else `facility_id`, else `facility`); a
relation without one cannot be scoped, so it is refused for a customer (fail closed) rather than shown
whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import BooleanExpression, In

from medlake_assets.spec.access import FACILITY_COLUMNS, Access, facility_column


class TenancyError(ValueError):
    """A read for a customer that cannot be scoped: an unknown customer, or a relation without a facility
    column. The message names the customer id and the relation, never a row value."""


def customer_facilities(access: Access, customer: str) -> frozenset[str]:
    """The facilities of `customer`; an id the access metadata does not declare is an error."""
    found = access.customers.get(customer)
    if found is None:
        known = ", ".join(sorted(access.customers)) or "none"
        raise TenancyError(f"unknown customer {customer!r}; the access metadata declares: {known}")
    return frozenset(found.facilities)


def scoping_column(relation: str, columns: Iterable[str]) -> str:
    """The column `relation` is scoped by, or a `TenancyError` saying it has none."""
    column = facility_column(columns)
    if column is None:
        raise TenancyError(
            f"{relation} has no facility column ({', '.join(FACILITY_COLUMNS)}), so its rows cannot be "
            "limited to a customer's facilities: it is not readable for a customer"
        )
    return column


def facility_filter(relation: str, columns: Iterable[str], facilities: frozenset[str]) -> BooleanExpression:
    """The Iceberg row filter keeping only rows of `facilities` (pushed down: files and partitions of other
    facilities are pruned before anything is read)."""
    return In(scoping_column(relation, columns), facilities)


def facility_rows(rows: pa.Table, column: str, facilities: Iterable[str]) -> pa.Table:
    """The rows of `rows` whose `column` is one of `facilities` (nulls belong to no facility)."""
    values = rows.column(column)
    return rows.filter(pc.is_in(values, value_set=pa.array(sorted(facilities), values.type)))
