"""`medlake sql`: DuckDB with every Iceberg table attached as a view, the ledger as `meta.*`, and a shell.

Views read each table's current metadata file with DuckDB's own Iceberg reader, so a query is also an
independent check that the tables pyiceberg wrote are valid Iceberg. Extensions load offline from the
`duckdb-extension-*` wheels.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Collection, Sequence
from pathlib import Path
from urllib.parse import urlparse

import duckdb
from duckdb_extensions import import_extension
from pyiceberg.catalog import Catalog
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy.engine import make_url

from medlake_assets.lake import Lake
from medlake_assets.serving.catalog_info import AsOf, existed_at, resolve_as_of, snapshot_at, table_names
from medlake_assets.serving.deid import deid_configured, register_deid_views
from medlake_assets.silver.quality.freshness import register_freshness_view

EXTENSIONS = ("avro", "iceberg", "httpfs", "sqlite_scanner", "postgres_scanner")


def needed_extensions(warehouse: str, ledger_url: str) -> list[str]:
    """The extensions a lake's views need (each LOAD costs ~0.1-0.3 s, paid by every serve-sql connection)."""
    needed = ["avro", "iceberg"]
    if warehouse.startswith("s3://"):
        needed.append("httpfs")
    needed.append(ledger_extension(ledger_url))
    return needed


def ledger_extension(ledger_url: str) -> str:
    """The extension that reads the ledger's database (`meta.*`)."""
    return "sqlite_scanner" if urlparse(ledger_url).scheme.startswith("sqlite") else "postgres_scanner"


SHELL_ROW_LIMIT = 1000
SHELL_HELP = "SQL ends with ';' (may span lines). .tables lists the relations, .quit (or Ctrl-D) leaves."


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


def sqlite_snapshot(path: str) -> Path:
    """A private, consistent copy of a SQLite ledger database, for DuckDB to attach instead of the file.

    DuckDB's sqlite scanner links a SQLite of its own, and two SQLite libraries on one database file in
    one process break SQLite's POSIX locks (sqlite.org/howtocorrupt.html, "multiple copies of SQLite
    linked into the same application"): once DuckDB closed the live file, this process's connections
    had lost their locks, another process deleted the WAL they still wrote to, and every ledger write
    after that was lost. The copy is made by Python's own sqlite3 (the backup API: one moment's state),
    so only DuckDB ever opens it; it is removed with the DuckDB connection.
    """
    folder = Path(tempfile.mkdtemp(prefix="medlake-ledger-"))
    copy = folder / "ledger.db"
    source, target = sqlite3.connect(path), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return copy


def _attach_ledger(con: duckdb.DuckDBPyConnection, catalog_url: str) -> None:
    """`meta.*` views over the ledger database (the caller makes sure its tables exist)."""
    parsed = urlparse(catalog_url)
    if parsed.scheme.startswith("sqlite"):
        copy = sqlite_snapshot(catalog_url.split(":///", 1)[1])
        weakref.finalize(con, shutil.rmtree, copy.parent, True)
        con.execute(f"ATTACH {_quote(str(copy))} AS medlake_state (TYPE sqlite, READ_ONLY)")
    else:
        # Through a secret, not a DSN: DuckDB shows an ATTACH path in duckdb_databases() and in its
        # connection errors, password included; secrets are redacted.
        url = make_url(catalog_url)
        parts = {
            "HOST": url.host,
            "PORT": url.port,
            "DATABASE": url.database,
            "USER": url.username,
            "PASSWORD": url.password,
        }
        options = ", ".join(f"{name} {_quote(str(value))}" for name, value in parts.items() if value)
        con.execute(f"CREATE OR REPLACE SECRET medlake_state_pg (TYPE postgres, {options})")
        con.execute("ATTACH '' AS medlake_state (TYPE postgres, SECRET medlake_state_pg, READ_ONLY)")
    con.execute("CREATE SCHEMA IF NOT EXISTS meta")
    con.execute("CREATE OR REPLACE VIEW meta.files AS SELECT * FROM medlake_state.medlake_files")
    for view, table in [
        ("quality", "medlake_quality"),
        ("processed", "medlake_processed"),
        ("held", "medlake_held"),
        ("sql_audit", "medlake_sql_audit"),
    ]:
        exists = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'medlake_state' AND table_name = ?",
            [table],
        ).fetchone()[0]
        if exists:
            con.execute(f"CREATE OR REPLACE VIEW meta.{view} AS SELECT * FROM medlake_state.{table}")


def _create_views(
    con: duckdb.DuckDBPyConnection, catalog: Catalog, as_of: AsOf | None, only: Collection[str] | None = None
) -> None:
    loaded = {name: catalog.load_table(name) for name in table_names(catalog) if only is None or name in only}
    point = resolve_as_of(catalog, as_of, loaded) if as_of is not None else None
    for namespace in catalog.list_namespaces():
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{namespace[0]}"')
    for name, table in loaded.items():
        schema, table_name = name.rsplit(".", 1)
        view = f'"{schema}"."{table_name}"'
        if point is None:
            snapshot = table.current_snapshot()
        elif existed_at(table, point):
            snapshot = snapshot_at(name, table, point)
        else:
            continue  # created after the point in time: absent, as it was then
        if snapshot is None:
            # A table with no snapshot yet: an empty relation with its schema, so queries still bind.
            con.register("empty_table", table.schema().as_arrow().empty_table())
            con.execute(f"CREATE OR REPLACE TABLE {view} AS SELECT * FROM empty_table")
            con.unregister("empty_table")
            continue
        location = _quote(_local_path(table.metadata_location))
        pinned = f", snapshot_from_id = {snapshot.snapshot_id}" if point is not None else ""
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM iceberg_scan({location}{pinned})")


def connect(
    lake: Lake,
    as_of: AsOf | None = None,
    ledger_url: str | None = None,
    extensions: Sequence[str] | None = None,
    *,
    tables: bool | Collection[str] = True,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with `<namespace>.<table>` views for every Iceberg table and `meta.*`.

    With `as_of` (a snapshot id, or an ISO timestamp / datetime, naive meaning UTC) every view reads the
    snapshot that was current then, and tables created later are absent. `meta.*` (the ledger) is not
    versioned and shows the present: the moment of the call (a copy of it on the embedded SQLite ledger).
    `ledger_url` attaches the ledger through another URL than the catalog's (serve-sql: a database role
    that cannot write). `extensions` are loaded (by default all, so a session can also attach PostgreSQL
    or read S3; serve-sql loads only `needed_extensions`). `tables` may name the `namespace.table` views
    wanted, for a reader that knows what it reads (a report run: loading every table's metadata was 0.6 s
    of it), with only the extensions they need and no `silver_deid.*`. Without `tables`, only `meta.*` and
    by default only the ledger's extension: for a reader of the ledger alone, such as the freshness checks
    of every ingest run, which would otherwise load every Iceberg table to create views it never reads.
    """
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"SET extension_directory = {_quote(str(lake.settings.home / 'duckdb_extensions'))}")
    ledger_url = ledger_url or lake.settings.catalog_url
    only = None if isinstance(tables, bool) else set(tables)  # None: every table, or none
    if extensions is None:
        if tables is True:
            extensions = EXTENSIONS
        elif only:
            extensions = needed_extensions(lake.settings.warehouse, ledger_url)
        else:
            extensions = [ledger_extension(ledger_url)]
    for name in extensions:
        import_extension(name, con=con)
        con.execute(f"LOAD {name}")
    if tables:
        if lake.settings.warehouse.startswith("s3://"):
            _configure_s3(con, lake.settings.s3_endpoint_url)
        _create_views(con, lake.catalog, as_of, only)
    _ = lake.ledger  # opening the ledger creates its tables on a lake nothing reached yet
    _attach_ledger(con, ledger_url)
    register_freshness_view(con, lake.sources)  # meta.freshness: each facility's cadence, lag and limit
    if tables is True and deid_configured():
        register_deid_views(con, lake.sources)  # silver_deid.*: needs the secret MEDLAKE_DEID_KEY
    return con


def render(relation: duckdb.DuckDBPyRelation, limit: int | None = None) -> RenderableType:
    """A rich table of a query's rows (at most `limit`, then a line saying the rest was left out)."""
    table = Table(*relation.columns)
    rows = relation.fetchall() if limit is None else relation.fetchmany(limit + 1)
    for row in rows[:limit]:
        # Text, not str: a value with [brackets] must not be read as rich markup.
        table.add_row(*[Text("" if value is None else str(value)) for value in row])
    if limit is not None and len(rows) > limit:
        return Group(table, Text(f"first {limit} rows shown; add LIMIT or aggregate to see the rest"))
    return table


def relations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The `<schema>.<name>` an analyst can query: the lake's views and tables, and `meta.*`."""
    rows = con.execute(
        """
        SELECT schema_name || '.' || view_name FROM duckdb_views()
        WHERE database_name = current_database() AND NOT internal
        UNION
        SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE database_name = current_database()
        ORDER BY 1
        """
    ).fetchall()
    return [name for (name,) in rows]


def _run(con: duckdb.DuckDBPyConnection, console: Console, statement: str) -> None:
    try:
        relation = con.sql(statement)
        if relation is not None:
            console.print(render(relation, SHELL_ROW_LIMIT))
    except duckdb.Error as error:
        console.print(str(error), style="red", markup=False, highlight=False)


def shell(con: duckdb.DuckDBPyConnection, console: Console, history_file: Path | None = None) -> None:
    """An interactive SQL prompt over `con` (readline editing and history when stdin is a terminal)."""
    import readline  # also gives input() line editing and history

    if history_file is not None and history_file.exists():
        readline.read_history_file(history_file)
    console.print(SHELL_HELP, markup=False, highlight=False)
    buffer: list[str] = []
    try:
        while True:
            try:
                line = input("  ...> " if buffer else "medlake> ")
            except EOFError:
                break
            except KeyboardInterrupt:
                buffer.clear()  # Ctrl-C drops the statement being typed, as psql and duckdb do
                console.print()
                continue
            command = line.strip()
            if not buffer and command.startswith("."):
                if command in (".quit", ".exit"):
                    break
                if command == ".tables":
                    console.print("\n".join(relations(con)), markup=False, highlight=False)
                else:
                    console.print(f"unknown command {command.split()[0]}. {SHELL_HELP}", markup=False)
                continue
            if command:
                buffer.append(line)
            if buffer and command.endswith(";"):
                _run(con, console, "\n".join(buffer))
                buffer.clear()
    finally:
        if history_file is not None:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history_file)
