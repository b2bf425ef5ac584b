"""The Iceberg catalog (pyiceberg SqlCatalog on SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.schema import Schema
from pyiceberg.table import CommitTableResponse, StagedTable, Table
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import TableRequirement, TableUpdate
from pyiceberg.transforms import Transform
from pyiceberg.typedef import Identifier
from sqlalchemy.exc import IntegrityError

from medlake_assets.lake.commits import Transaction, apply_updates
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


class LakeTable(Table):
    """A table of the lake's catalog: its transactions are the lake's (`lake/commits.py: Transaction`), so
    `append`, `overwrite`, `delete` and `transaction()` commit without copying the table's history."""

    def transaction(self) -> Transaction:
        return Transaction(self)


class LakeCatalog(SqlCatalog):
    """pyiceberg's SQL catalog, reading a table's metadata file once per version instead of at every load.

    pyiceberg reads and parses the whole metadata file (every snapshot kept) at each `load_table`, and a
    run loads its tables ~50 times (`ensure_table`, a commit's check of the current state, the refresh
    after it). A metadata file never changes once written (each commit writes a new one), so the parsed
    metadata of each table's latest version is kept by its location: a load still asks the database for
    the current location, and reads the file only when another process has committed since. A commit of
    this catalog keeps the metadata it wrote, as pyiceberg's own table does. The metadata is immutable
    (frozen pydantic models), so tables may share it.

    A commit to an existing table applies its updates without copying the table's history
    (`lake/commits.py: apply_updates`); a new table is built and validated by pyiceberg. Its tables are
    `LakeTable`s, whose transactions do the same.
    """

    def __init__(self, name: str, **properties: str):
        super().__init__(name, **properties)
        # (namespace, table name) -> the location and parsed metadata of the latest version this process saw
        self._latest: dict[tuple[str, str], tuple[str, TableMetadata]] = {}
        self._latest_lock = threading.Lock()

    def _convert_orm_to_iceberg(self, orm_table: IcebergTables) -> Table:
        key = (orm_table.table_namespace, orm_table.table_name)
        with self._latest_lock:
            location, metadata = self._latest.get(key, (None, None))
        if metadata is None or location != orm_table.metadata_location:
            read = super()._convert_orm_to_iceberg(orm_table)
            location, metadata = read.metadata_location, read.metadata
            self._remember(read.name(), location, metadata)
        return LakeTable(
            identifier=(*Catalog.identifier_to_tuple(key[0]), key[1]),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    def commit_table(
        self, table: Table, requirements: tuple[TableRequirement, ...], updates: tuple[TableUpdate, ...]
    ) -> CommitTableResponse:
        response = super().commit_table(table, requirements, updates)
        self._remember(table.name(), response.metadata_location, response.metadata)
        return response

    def _update_and_stage_table(
        self,
        current_table: Table | None,
        table_identifier: Identifier,
        requirements: tuple[TableRequirement, ...],
        updates: tuple[TableUpdate, ...],
    ) -> StagedTable:
        if current_table is None:
            return super()._update_and_stage_table(current_table, table_identifier, requirements, updates)
        for requirement in requirements:
            requirement.validate(current_table.metadata)
        metadata = apply_updates(current_table.metadata, updates, current_table.metadata_location)
        version = self._parse_metadata_version(current_table.metadata_location) + 1
        provider = load_location_provider(metadata.location, metadata.properties)
        location = provider.new_table_metadata_file_location(version)
        return StagedTable(
            identifier=table_identifier,
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(properties=metadata.properties, location=location),
            catalog=self,
        )

    def _remember(self, identifier: Identifier, location: str, metadata: TableMetadata) -> None:
        key = (
            Catalog.namespace_to_string(Catalog.namespace_from(identifier)),
            Catalog.table_name_from(identifier),
        )
        with self._latest_lock:
            self._latest[key] = (location, metadata)


def open_catalog(settings: Settings) -> Catalog:
    """Open the catalog and make sure the medlake namespaces exist."""
    if settings.catalog_url.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    catalog = LakeCatalog("medlake", **catalog_properties(settings))
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
