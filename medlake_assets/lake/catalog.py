"""The Iceberg catalog (pyiceberg SqlCatalog on SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import Transform
from sqlalchemy.exc import IntegrityError

from medlake_assets.lake.docs import apply_column_docs, schema_docs
from medlake_assets.lake.settings import Settings

NAMESPACES = ("bronze", "silver", "quarantine", "gold")


def catalog_properties(settings: Settings) -> dict[str, str]:
    # pool_pre_ping: after a database restart, a pooled connection is tested and replaced before use
    # instead of failing the next commit (pyiceberg's default is off; the ledger's engine does the same).
    properties = {"uri": settings.catalog_url, "warehouse": settings.warehouse, "pool_pre_ping": "true"}
    if settings.warehouse.startswith("s3://"):
        if settings.s3_endpoint_url:
            properties["s3.endpoint"] = settings.s3_endpoint_url
            properties["s3.force-virtual-addressing"] = "false"
        for env_name, key in [
            ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
            ("AWS_DEFAULT_REGION", "s3.region"),
        ]:
            if os.environ.get(env_name):
                properties[key] = os.environ[env_name]
    return properties


def open_catalog(settings: Settings) -> Catalog:
    """Open the catalog and make sure the medlake namespaces exist."""
    if settings.catalog_url.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog("medlake", **catalog_properties(settings))
    for namespace in NAMESPACES:
        # IntegrityError: a concurrent process created it between pyiceberg's check and its insert.
        with contextlib.suppress(IntegrityError):
            catalog.create_namespace_if_not_exists(namespace)
    return catalog


PartitionField = tuple[str, Transform, str]
"""(source column, transform, partition field name)."""


def ensure_table(
    catalog: Catalog,
    identifier: str,
    schema: Schema | pa.Schema,
    partition_fields: Sequence[PartitionField],
    properties: Mapping[str, str],
) -> Table:
    """The table, loaded; created with its partition spec only when missing. Every layer ensures its tables
    here.

    Loading first matters: pyiceberg's `create_table_if_not_exists` creates first, so every call on an
    existing table wrote an orphan `00000-*.metadata.json` before finding the table. A column added to the
    metadata later is added to the table (older rows read it as null), the schema's column docs
    (descriptions from the metadata) are kept up to date, and `properties` it lacks are set.
    """
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        # Table and partition spec in one commit: a concurrent writer never sees it unpartitioned.
        create = catalog.create_table_transaction(identifier, schema=schema, properties=dict(properties))
        if partition_fields:
            with create.update_spec() as update:
                for column, transform, name in partition_fields:
                    update.add_field(column, transform, name)
        # Another writer created it first (with the same schema and spec): pyiceberg reports that as either.
        with contextlib.suppress(TableAlreadyExistsError, CommitFailedException):
            create.commit_transaction()
        table = catalog.load_table(identifier)
    if missing := {key: value for key, value in properties.items() if key not in table.properties}:
        # A property declared since the table was made (e.g. manifest merging) reaches it; one set by hand
        # stays. Losing the race to a concurrent commit leaves it for the next ensure.
        with contextlib.suppress(CommitFailedException):
            table.transaction().set_properties(missing).commit_transaction()
        table = catalog.load_table(identifier)
    names = schema.names if isinstance(schema, pa.Schema) else schema.column_names
    if any(name not in table.schema().column_names for name in names):
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(identifier)
    if apply_column_docs(table, schema_docs(schema)):  # descriptions changed in the metadata since creation
        table = catalog.load_table(identifier)
    return table
