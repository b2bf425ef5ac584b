"""One client's DuckDB database: only what its login may read, with its customer's filters baked in.

`serving.sql.connect` builds the lake's relations in an in-memory DuckDB (catalog `memory`): every
Iceberg table, `silver_deid.*`, and `meta.*` over the ledger attached read-only. On top, a second
catalog `medlake` gets one view per relation the login may read: for a customer (or a deid login
naming a customer) `SELECT * FROM memory.<schema>.<table> WHERE <facility column> IN (<its
facilities>)`; a relation without a facility column is left out for them (fail closed). The client's
default catalog is `medlake` and the statement checker refuses any other, so `memory` is out of reach:
the filter is part of what the connection can see, not of the client's SQL.

The database is then locked: no file or network access except reading the warehouse, no extension
loading, a memory limit and thread count, and `lock_configuration` so that nothing can be changed back.
Every client connection gets its own database (`duckdb.connect()`), never a cursor of a shared one.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import duckdb

from medlake_assets.gold.spec import load_reports
from medlake_assets.lake import Lake
from medlake_assets.serving.catalog_info import AsOf
from medlake_assets.serving.pgwire import catalog as pg_catalog
from medlake_assets.serving.pgwire.config import ServeSettings
from medlake_assets.serving.pgwire.statements import Catalog, builtin_functions
from medlake_assets.serving.sql import connect, needed_extensions
from medlake_assets.spec.access import Access, Login, can_read_schema, facility_column
from medlake_assets.spec.descriptions import TableDescription, describe_lake

PUBLIC = "medlake"
PRIVATE = "memory"
OPERATOR_ONLY = {("meta", "sql_audit")}
_HIDDEN_SCHEMAS = ("main", "pg_catalog", "information_schema")


@dataclass
class LoginDatabase:
    """A locked DuckDB for one login, and what its statement checker needs to know about it."""

    con: duckdb.DuckDBPyConnection
    catalog: Catalog
    relations: tuple[pg_catalog.Relation, ...]

    def close(self) -> None:
        self.con.close()


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _private_relations(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], list[tuple[str, str, bool]]]:
    rows = con.execute(
        "SELECT schema_name, table_name, column_name, data_type, is_nullable FROM duckdb_columns() "
        f"WHERE database_name = '{PRIVATE}' ORDER BY schema_name, table_name, column_index"
    ).fetchall()
    relations: dict[tuple[str, str], list[tuple[str, str, bool]]] = {}
    for schema, table, column, data_type, nullable in rows:
        if schema not in _HIDDEN_SCHEMAS:
            relations.setdefault((schema, table), []).append((column, data_type, nullable))
    return relations


def _readable_roots(lake: Lake) -> list[str]:
    warehouse = lake.settings.warehouse
    if warehouse.startswith("file:"):
        warehouse = urlparse(warehouse).path
    return [warehouse.rstrip("/") + "/"]


def lock(con: duckdb.DuckDBPyConnection, lake: Lake, serve: ServeSettings) -> None:
    """Confine the database: read the warehouse only, no extensions, bounded memory, settings frozen."""
    roots = ", ".join(_quote(root) for root in _readable_roots(lake))
    con.execute(f"SET memory_limit = {_quote(serve.memory_limit)}")
    con.execute(f"SET threads = {int(serve.threads)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute(f"SET allowed_directories = [{roots}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET lock_configuration = true")


@functools.cache
def _builtins() -> frozenset[str]:
    # From a pristine database: the Python UDFs a lake registers (deid tokens) are not DuckDB's own.
    with duckdb.connect() as pristine:
        return builtin_functions(pristine)


def lake_descriptions(lake: Lake) -> dict[str, TableDescription]:
    """Descriptions of every table from the source metadata and the report headers."""
    directory = lake.settings.reports_dir
    reports = load_reports(directory) if directory.is_dir() else []
    return describe_lake(lake.sources, [(report.identifier, report.header.description) for report in reports])


def open_login_database(
    lake: Lake,
    access: Access,
    login: Login,
    serve: ServeSettings,
    as_of: AsOf | None = None,
    descriptions: Mapping[str, TableDescription] | None = None,
) -> LoginDatabase:
    """A new, locked database for `login` (as of `as_of` when given)."""
    ledger_url = serve.ledger_url or lake.settings.catalog_url
    con = connect(lake, as_of, ledger_url, needed_extensions(lake.settings.warehouse, ledger_url))
    try:
        scope = access.facility_scope(login)
        con.execute(f"ATTACH ':memory:' AS {PUBLIC}")
        exposed: list[pg_catalog.Relation] = []
        for (schema, table), columns in _private_relations(con).items():
            if not can_read_schema(login, schema):
                continue
            if (schema, table) in OPERATOR_ONLY and login.role != "operator":
                continue
            source = f"{PRIVATE}.{_ident(schema)}.{_ident(table)}"
            query = f"SELECT * FROM {source}"
            if scope is not None:
                column = facility_column(name for name, _, _ in columns)
                if column is None:
                    continue  # cannot be filtered by facility: not shown to a scoped login
                listed = ", ".join(_quote(facility) for facility in sorted(scope)) or "NULL"
                query += f" WHERE {_ident(column)} IN ({listed})"
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {PUBLIC}.{_ident(schema)}")
            con.execute(f"CREATE VIEW {PUBLIC}.{_ident(schema)}.{_ident(table)} AS {query}")
            exposed.append(pg_catalog.Relation(schema, table, tuple(columns)))
        con.execute(f"USE {PUBLIC}")
        if descriptions is None:
            descriptions = lake_descriptions(lake)
        pg_catalog.build(con, exposed, descriptions, login.user)
        con.execute(f"SET search_path = '{PUBLIC}.{pg_catalog.PRIVATE_SCHEMA},{PUBLIC}.main'")
        lock(con, lake, serve)
    except BaseException:
        con.close()
        raise
    checker_catalog = Catalog(
        readable_schemas=frozenset(relation.schema for relation in exposed),
        pg_relations=pg_catalog.pg_relation_names(),
        information_schema_relations=frozenset(pg_catalog.INFORMATION_SCHEMA_VIEWS),
        pg_functions=pg_catalog.pg_function_names(),
        builtin_functions=_builtins(),
        empty_relations=pg_catalog.EMPTY_RELATIONS,
    )
    return LoginDatabase(con, checker_catalog, tuple(exposed))
