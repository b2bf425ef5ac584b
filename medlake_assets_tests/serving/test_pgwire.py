"""`serve-sql` with real clients: psycopg (extended protocol) and psql (simple protocol, catalog queries)
against a small generated and ingested lake: rows, many rows, errors that leave the connection usable, a
wrong password, refused writes, and DuckDB confined to the warehouse."""

from __future__ import annotations

import os
import secrets
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import psycopg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.serving.pgwire import build_server
from medlake_assets.serving.sql import connect
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import generate_feeds, write_feeds

pytestmark = pytest.mark.e2e

GENERATION = {"facilities": 2, "archives": 12, "seed": 3, "bad_rate": 0.0, "day": DAY, "size_scale": 0.02}
USER = "medlake"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    """(dsn parts, expected counts) for a running server over a freshly ingested lake."""
    home = tmp_path_factory.mktemp("pgwire") / "home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDLAKE_ARCHIVE_PASSWORD", secrets.token_urlsafe(12))
        manifest = write_feeds(home, **GENERATION)
        settings = local_settings(home)
        lake = open_lake(settings)
        with dg.instance_for_test() as instance:
            summary = ingest_once(build_definitions(settings), instance, lake)
    assert summary.failed_runs == 0
    reference = connect(lake)
    expected = {
        "adt_events": manifest["sources"]["adt_events"]["records"],
        "lab_results": reference.execute("SELECT count(*) FROM bronze.lab_results").fetchone()[0],
        "lab_results_silver": reference.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0],
        "first_labs": reference.execute(
            "SELECT _archive, _member, _record FROM bronze.lab_results ORDER BY ALL LIMIT 3"
        ).fetchall(),
    }
    password = secrets.token_urlsafe(16)
    server = build_server(lake, "127.0.0.1", 0, USER, password)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"host": "127.0.0.1", "port": server.server_address[1], "password": password}, expected
    server.shutdown()
    server.server_close()


def pg(parts: dict, **overrides) -> psycopg.Connection:
    options = {"host": parts["host"], "port": parts["port"], "user": USER, "password": parts["password"]}
    options = {"dbname": "medlake", "autocommit": True, "connect_timeout": 10, **options, **overrides}
    return psycopg.connect(**options)


def psql(
    parts: dict, *args: str, password: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess:
    """The real psql client (simple query protocol), password from PGPASSWORD; -X skips any ~/.psqlrc."""
    env = {**os.environ, "PGPASSWORD": password or parts["password"], "PGCONNECT_TIMEOUT": "10"}
    command = ["/usr/bin/psql", "-h", parts["host"], "-p", str(parts["port"]), "-U", USER, "-d", "medlake"]
    return subprocess.run(
        [*command, "-X", *args], input=stdin, env=env, capture_output=True, text=True, timeout=60
    )


def test_psycopg_reads_rows_many_rows_and_parameters(endpoint):
    parts, expected = endpoint
    with pg(parts) as con:
        assert con.execute("SELECT count(*) FROM bronze.adt_events").fetchone()[0] == expected["adt_events"]
        rows = con.execute("SELECT _archive, _member, _record FROM bronze.lab_results").fetchall()
        assert len(rows) == expected["lab_results"] > 1000
        assert sorted(rows)[:3] == expected["first_labs"]
        archive, member, record = expected["first_labs"][0]
        found = con.execute(
            "SELECT count(*) FROM bronze.lab_results WHERE _archive = %s AND _member = %s AND _record = %s",
            (archive, member, record),
        ).fetchone()[0]
        assert found == 1
        assert con.execute("SELECT %s + 1, %s || 'b', %s", (41, "a", True)).fetchone() == (42, "ab", True)


def test_psycopg_transactions_are_accepted(endpoint):
    parts, expected = endpoint
    with pg(parts, autocommit=False) as con:
        assert con.execute("SELECT count(*) FROM bronze.adt_events").fetchone()[0] == expected["adt_events"]
        con.rollback()
        assert con.execute("SELECT 1 + 1").fetchone()[0] == 2
        con.commit()


def test_bad_query_is_a_clear_error_and_the_connection_survives(endpoint):
    parts, _ = endpoint
    with pg(parts) as con:
        with pytest.raises(psycopg.errors.UndefinedTable) as missing:
            con.execute("SELECT * FROM silver.no_such_table")
        assert "no_such_table" in str(missing.value)
        with pytest.raises(psycopg.errors.SyntaxError):
            con.execute("SELEC 1")
        assert con.execute("SELECT 42").fetchone()[0] == 42


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("DELETE FROM bronze.adt_events", "DELETE"),
        ("INSERT INTO bronze.adt_events SELECT * FROM bronze.adt_events", "INSERT"),
        ("DROP VIEW bronze.adt_events", "DROP"),
        ("CREATE TABLE main.copy AS SELECT 1", "CREATE"),
        ("COPY (SELECT 1) TO '/tmp/medlake-pgwire-leak.csv'", "COPY"),
        ("ATTACH '/tmp/medlake-pgwire.db' AS other", "ATTACH"),
        ("SELECT 1; DROP VIEW bronze.adt_events", "DROP"),
    ],
)
def test_writes_are_refused_and_change_nothing(endpoint, statement, kind):
    parts, expected = endpoint
    with pg(parts) as con:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
            con.execute(statement)
        assert str(refused.value).startswith(f"medlake serve-sql is read-only: {kind} statements are refused")
        assert con.execute("SELECT count(*) FROM bronze.adt_events").fetchone()[0] == expected["adt_events"]
    assert not os.path.exists("/tmp/medlake-pgwire-leak.csv")


def test_duckdb_cannot_read_outside_the_warehouse_or_reopen_access(endpoint):
    parts, _ = endpoint
    with pg(parts) as con:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            con.execute("SELECT * FROM read_csv('/etc/passwd')")
        assert "file system operations are disabled" in str(denied.value)
        server_wide = [
            ("SET enable_external_access = true", "enable_external_access"),
            ("SET memory_limit = '1TB'", "memory_limit"),
            ("SELECT 1; SET threads = 64", "threads"),
        ]
        for statement, name in server_wide:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
                con.execute(statement)
            assert str(refused.value) == f"medlake serve-sql refuses SET of the server-wide setting {name}"
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] != 64
        # PostgreSQL-only parameters that client tools set at connect are accepted; session ones apply.
        con.execute("SET application_name = 'powerbi'")
        con.execute("SET extra_float_digits = 3")
        con.execute("SET search_path = 'silver'")
        assert con.execute("SELECT count(*) FROM encounters").fetchone()[0] > 0


def test_wrong_password_and_wrong_user_are_refused(endpoint):
    parts, _ = endpoint
    with pytest.raises(psycopg.OperationalError) as wrong:
        pg(parts, password="not-the-password")
    assert 'password authentication failed for user "medlake"' in str(wrong.value)
    with pytest.raises(psycopg.OperationalError) as stranger:
        pg(parts, user="someone")
    assert 'password authentication failed for user "someone"' in str(stranger.value)
    result = psql(parts, "-c", "SELECT 1", password="not-the-password")
    assert result.returncode == 2
    assert 'password authentication failed for user "medlake"' in result.stderr


def test_psql_queries_errors_writes_and_catalog(endpoint):
    parts, expected = endpoint
    script = "\n".join(
        [
            "SELECT count(*) AS n FROM bronze.adt_events;",
            "SELECT * FROM nowhere.nothing;",
            "DELETE FROM bronze.adt_events;",
            "SELECT 'still here' AS alive;",
            "SELECT schema_name FROM information_schema.schemata ORDER BY 1;",
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'silver' ORDER BY 1;",
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'silver' AND table_name = 'lab_results' AND column_name = 'order_id';",
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'bronze' AND c.relname = 'adt_events';",
        ]
    )
    result = psql(parts, "-A", "-t", "-v", "ON_ERROR_STOP=0", stdin=script)
    lines = result.stdout.splitlines()
    assert lines[0] == str(expected["adt_events"])
    assert lines[1] == "still here"
    assert {"bronze", "silver", "quarantine", "meta"} <= set(lines)
    assert {"adt_events", "encounters", "lab_results"} <= set(lines)
    assert "order_id" in lines
    assert lines[-1] == "bronze|adt_events"
    assert "nothing" in result.stderr
    assert "medlake serve-sql is read-only: DELETE statements are refused" in result.stderr


def test_psql_lists_schemas_tables_and_columns(endpoint):
    parts, _ = endpoint
    result = psql(
        parts, "-A", "-t", "-c", r"\l", "-c", r"\dn", "-c", r"\dv silver.*", "-c", r"\d silver.lab_results"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("medlake|medlake|UTF8|")  # psql versions order the locale columns differently
    assert {"bronze|medlake", "silver|medlake", "quarantine|medlake", "meta|medlake"} <= set(lines)
    assert "silver|lab_results|view|medlake" in lines
    assert "order_id|varchar|||" in lines
    assert "result_ts|timestamptz|||" in lines


def test_psycopg_types(endpoint):
    parts, _ = endpoint
    with pg(parts) as con:
        row = con.execute(
            "SELECT result_ts, _record, _landing_day, _deleted FROM silver.lab_results ORDER BY ALL LIMIT 1"
        ).fetchone()
    assert [type(value).__name__ for value in row] == ["datetime", "int", "date", "bool"]
    assert row[0].tzinfo is not None
    assert row[2] == DAY


def test_psycopg_prepared_statements(endpoint):
    parts, expected = endpoint
    archive = expected["first_labs"][0][0]
    query = "SELECT count(*) FROM bronze.lab_results WHERE _archive = %s"
    with pg(parts) as con:
        # prepare=True: Parse with a statement name, then Bind/Execute of it, as psycopg does for hot queries.
        counts = {con.execute(query, (archive,), prepare=True).fetchone()[0] for _ in range(3)}
        unprepared = con.execute(query, (archive,), prepare=False).fetchone()[0]
    assert counts == {unprepared}
    assert unprepared >= 1


@pytest.mark.s3
def test_warehouse_on_s3_is_readable_while_other_paths_are_not(
    tmp_path, archive_password, s3_endpoint, s3_bucket
):
    settings = local_settings(
        tmp_path / "home", MEDLAKE_STORE_URL=f"s3://{s3_bucket}/medlake", MEDLAKE_S3_ENDPOINT_URL=s3_endpoint
    )
    lake = open_lake(settings)
    manifest = generate_feeds(lake.store.put, **{**GENERATION, "archives": 4})
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(settings), instance, lake).failed_runs == 0
    server = build_server(lake, "127.0.0.1", 0, USER, "s3-secret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    parts = {"host": "127.0.0.1", "port": server.server_address[1], "password": "s3-secret"}
    try:
        with pg(parts) as con:
            count = con.execute("SELECT count(*) FROM bronze.adt_events").fetchone()[0]
            assert count == manifest["sources"]["adt_events"]["records"]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(f"SELECT * FROM read_csv('s3://{s3_bucket}/elsewhere.csv')")
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_connections_each_get_their_rows(endpoint):
    parts, expected = endpoint

    def count_labs(_: int) -> int:
        with pg(parts) as con:
            return len(con.execute("SELECT _archive, _member, _record FROM bronze.lab_results").fetchall())

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(count_labs, range(8))) == [expected["lab_results"]] * 8


JDBC_DRIVER = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java (.ci/run installs it)


def test_jdbc_bi_catalog_lists_schemas_tables_columns_and_queries(endpoint):
    """The PostgreSQL JDBC driver, as Tableau, Metabase and DBeaver use it: metadata calls, then a
    prepared query (the driver's own catalog SQL, not ours)."""
    parts, expected = endpoint
    program = os.path.join(os.path.dirname(__file__), "jdbc", "BiCatalog.java")
    url = f"jdbc:postgresql://{parts['host']}:{parts['port']}/medlake?sslmode=disable"
    result = subprocess.run(
        ["java", "-cp", JDBC_DRIVER, program, url, USER, "silver", "lab_results"],
        env={**os.environ, "PGPASSWORD": parts["password"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = [line.split("\t") for line in result.stdout.splitlines()]
    assert {row[1] for row in found if row[0] == "schema"} >= {"bronze", "silver", "quarantine", "meta"}
    assert ["table", "silver.lab_results", "VIEW"] in found
    assert ["table", "silver.encounters", "VIEW"] in found
    columns = {row[1]: row[2] for row in found if row[0] == "column"}
    assert columns["order_id"] == "varchar"
    assert columns["result_ts"] == "timestamptz"
    assert ["count", str(expected["lab_results_silver"])] in found
