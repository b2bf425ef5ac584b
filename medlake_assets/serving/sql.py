"""`medlake sql`: DuckDB with every Iceberg table attached as a view, and the ledger as `meta.files`.

Views read each table's current metadata file with DuckDB's own Iceberg reader, so a query is also an
independent check that the tables pyiceberg wrote are valid Iceberg. Extensions load offline from the
`duckdb-extension-*` wheels.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

import duckdb
from duckdb_extensions import import_extension

from medlake_assets.lake import Lake

EXTENSIONS = ("avro", "iceberg", "httpfs", "sqlite_scanner", "postgres_scanner")


def _local_path(location: str) -> str:
    return urlparse(location).path if location.startswith("file:") else location


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _configure_s3(con: duckdb.DuckDBPyConnection, endpoint_url: str | None) -> None:
    options = ["TYPE s3", "PROVIDER config"]
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        options.append(f"KEY_ID {_quote(os.environ['AWS_ACCESS_KEY_ID'])}")
        options.append(f"SECRET {_quote(os.environ.get('AWS_SECRET_ACCESS_KEY', ''))}")
    options.append(f"REGION {_quote(os.environ.get('AWS_DEFAULT_REGION', 'us-east-1'))}")
    if endpoint_url:
        parsed = urlparse(endpoint_url)
        options += [
            f"ENDPOINT {_quote(parsed.netloc)}",
            "URL_STYLE 'path'",
            f"USE_SSL {parsed.scheme == 'https'}",
        ]
    con.execute(f"CREATE OR REPLACE SECRET medlake_s3 ({', '.join(options)})")


def _attach_ledger(con: duckdb.DuckDBPyConnection, catalog_url: str) -> None:
    parsed = urlparse(catalog_url)
    if parsed.scheme.startswith("sqlite"):
        con.execute(
            f"ATTACH {_quote(catalog_url.split(':///', 1)[1])} AS medlake_state (TYPE sqlite, READ_ONLY)"
        )
    else:
        dsn = f"postgresql://{parsed.netloc}{parsed.path}"
        con.execute(f"ATTACH {_quote(dsn)} AS medlake_state (TYPE postgres, READ_ONLY)")
    con.execute("CREATE SCHEMA IF NOT EXISTS meta")
    con.execute("CREATE OR REPLACE VIEW meta.files AS SELECT * FROM medlake_state.medlake_files")
    for view, table in [("quality", "medlake_quality"), ("processed", "medlake_processed")]:
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'medlake_state' AND table_name = ?",
            [table],
        ).fetchone()[0]
        if exists:
            con.execute(f"CREATE OR REPLACE VIEW meta.{view} AS SELECT * FROM medlake_state.{table}")


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with `<namespace>.<table>` views for every Iceberg table and `meta.files`."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"SET extension_directory = {_quote(str(lake.settings.home / 'duckdb_extensions'))}")
    for name in EXTENSIONS:
        import_extension(name, con=con)
        con.execute(f"LOAD {name}")
    if lake.settings.warehouse.startswith("s3://"):
        _configure_s3(con, lake.settings.s3_endpoint_url)
    catalog = lake.catalog
    for namespace in catalog.list_namespaces():
        schema = namespace[0]
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for identifier in catalog.list_tables(namespace):
            table = catalog.load_table(identifier)
            view = f'"{schema}"."{identifier[-1]}"'
            if table.metadata.current_snapshot_id is None:
                # A table with no snapshot yet: an empty relation with its schema, so queries still bind.
                con.register("empty_table", table.schema().as_arrow().empty_table())
                con.execute(f"CREATE OR REPLACE TABLE {view} AS SELECT * FROM empty_table")
                con.unregister("empty_table")
                continue
            location = _quote(_local_path(table.metadata_location))
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM iceberg_scan({location})")
    _attach_ledger(con, lake.settings.catalog_url)
    return con
