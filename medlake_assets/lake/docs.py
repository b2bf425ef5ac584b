"""Column docs of Iceberg tables, from the descriptions the metadata gives (`spec.descriptions`).

Set when a table is created (NestedField docs, or Arrow field metadata `doc`, which pyiceberg reads) and
brought up to date on existing tables by one schema update that touches only docs (no data rewritten).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.table import Table

if TYPE_CHECKING:
    from medlake_assets.lake import Lake

from medlake_assets.spec.descriptions import column_docs, describe_lake

DOC_KEY = b"doc"  # the Arrow field metadata key pyiceberg turns into an Iceberg field doc


def with_docs(schema: pa.Schema, docs: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema with each described column's doc in its field metadata."""
    fields = []
    for field in schema:
        doc = docs.get(field.name)
        fields.append(
            field.with_metadata({**(field.metadata or {}), DOC_KEY: doc.encode()}) if doc else field
        )
    return pa.schema(fields, metadata=schema.metadata)


def schema_docs(schema: Schema | pa.Schema) -> dict[str, str]:
    """The column docs a schema carries (Iceberg field docs, or Arrow field metadata `doc`)."""
    if isinstance(schema, pa.Schema):
        return {
            field.name: field.metadata[DOC_KEY].decode()
            for field in schema
            if field.metadata and DOC_KEY in field.metadata
        }
    return {field.name: field.doc for field in schema.fields if field.doc}


def apply_column_docs(table: Table, docs: Mapping[str, str]) -> list[str]:
    """Set the docs of the table's top-level columns that differ from `docs`; returns the columns changed."""
    current = {field.name: field.doc for field in table.schema().fields}
    changed = [name for name, doc in docs.items() if name in current and current[name] != doc]
    if changed:
        with table.update_schema() as update:
            for name in changed:
                update.update_column(name, doc=docs[name])
    return changed


def refresh_docs(lake: Lake, reports: Sequence[tuple[str, str]] = ()) -> dict[str, list[str]]:
    """Bring every table's column docs up to date with the metadata (sources, and `reports` as (gold table,
    description) pairs); the columns changed per table."""
    described = describe_lake(lake.sources, list(reports))
    changed = {}
    for namespace in lake.catalog.list_namespaces():
        for identifier in lake.catalog.list_tables(namespace):
            name = ".".join(identifier)
            table = lake.catalog.load_table(identifier)
            docs = column_docs(described.get(name), table.schema().column_names)
            if docs and (columns := apply_column_docs(table, docs)):
                changed[name] = columns
    return changed
