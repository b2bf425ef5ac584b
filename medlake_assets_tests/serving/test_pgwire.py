"""`serve-sql` against a generated and ingested lake, with real clients (psycopg, psql, SQLAlchemy with
psycopg2 and pandas, raw protocol sockets): every attack of issue 9 refused with a clear error and the
lake unchanged, tenancy per login across every relation and through time travel, the audit log, and no
query text or values in any log."""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import psutil
import psycopg
import pytest
import sqlalchemy as sa

from medlake_assets.serving.audit import TABLE_NAME as AUDIT_TABLE
from medlake_assets_tests.serving.pgwire_helpers import (
    DEID_KEY,
    NORTHWIND,
    RIVERSIDE,
    base_environ,
    lake_fingerprint,
    make_lake,
    raw_login,
    read_message,
    send_query,
    serve,
    served_lake,
    stop,
)

pytestmark = pytest.mark.e2e
PLANTED = "PLANTED-PATIENT-7731"  # a value a query carries; it must never reach a log


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    home = tmp_path_factory.mktemp("pgwire") / "home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEDLAKE_ARCHIVE_PASSWORD", "synthetic-archive-password-31")
        env.setenv("MEDLAKE_INGEST_WORKERS", "1")  # archives read in this process: no worker pool to start
        env.setenv("MEDLAKE_DEID_KEY", DEID_KEY)  # silver_deid.* views, built in each session's database
        yield make_lake(home)  # one lake for the module: every test only reads it


@pytest.fixture(scope="module")
def served(lake):
    running = serve(lake, base_environ())
    yield running
    stop(running)


@pytest.fixture
def logs(caplog, capfd):
    """Everything logged or printed during a test, to look for planted values in."""
    caplog.set_level(logging.DEBUG)

    def collected() -> str:
        out, err = capfd.readouterr()
        return caplog.text + out + err

    return collected


def refused(con: psycopg.Connection, sql: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as caught:
        con.execute(sql)
    return caught.value


# --- attacks ---

WRITES = [
    (
        "EXPLAIN ANALYZE CREATE OR REPLACE VIEW silver_deid.lab_results AS SELECT * FROM silver.lab_results",
        "EXPLAIN ANALYZE runs its statement and is refused",
    ),
    ("EXPLAIN ANALYZE DROP VIEW silver.lab_results", "EXPLAIN ANALYZE runs its statement and is refused"),
    (
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '{warehouse_file}' (FORMAT parquet)",
        "EXPLAIN ANALYZE runs its statement and is refused",
    ),
    ("COPY (SELECT 1) TO '{warehouse_file}' (FORMAT parquet)", "COPY statements are refused"),
    (
        "CREATE OR REPLACE VIEW silver_deid.lab_results AS SELECT * FROM silver.lab_results",
        "CREATE statements are refused",
    ),
    ("DROP VIEW bronze.adt_events", "DROP statements are refused"),
    ("INSERT INTO meta.files SELECT * FROM meta.files", "INSERT statements are refused"),
    ("DELETE FROM bronze.adt_events", "DELETE statements are refused"),
    ("ATTACH '{warehouse_dir}/x.duckdb' AS x", "ATTACH statements are refused"),
    ("DETACH medlake_state", "DETACH statements are refused"),
    ("USE memory", "USE statements are refused"),
    ("CHECKPOINT", "CHECKPOINT statements are refused"),
    ("LOAD httpfs", "LOAD statements are refused"),
    ("INSTALL spatial", "INSTALL statements are refused"),
    ("CALL postgres_execute('medlake_state', 'DELETE FROM medlake_files')", "CALL statements are refused"),
    (
        "SELECT * FROM postgres_execute('medlake_state', 'COMMIT; DELETE FROM medlake_files')",
        "table function postgres_execute is not available",
    ),
    (
        "SELECT * FROM sqlite_scan('{catalog_db}', 'medlake_files')",
        "table function sqlite_scan is not available",
    ),
]


def test_writes_and_explain_analyze_are_refused_and_the_lake_is_unchanged(served, logs):
    lake = served.lake
    warehouse_dir = lake.settings.warehouse.removeprefix("file://")
    before = lake_fingerprint(lake)
    warehouse_file = next(name for name in before["files"] if name.endswith(".parquet"))
    values = {
        "warehouse_file": f"{warehouse_dir}/{warehouse_file}",
        "warehouse_dir": warehouse_dir,
        "catalog_db": str(lake.settings.home / "catalog.db"),
    }
    with served.connect() as con:
        for sql, message in WRITES:
            error = refused(con, sql.format(**values))
            assert message in str(error), (sql, str(error))
            assert error.sqlstate in ("25006", "42501")
        assert con.execute("SELECT count(*) FROM silver_deid.lab_results").fetchone()[0] > 0
    assert lake_fingerprint(lake) == before
    assert warehouse_dir not in logs()


DOORS = [
    (
        "SELECT * FROM read_parquet('{warehouse_dir}/**/*.parquet')",
        "table function read_parquet is not available",
    ),
    ("SELECT * FROM iceberg_scan('{metadata}')", "table function iceberg_scan is not available"),
    ("SELECT * FROM read_text('/etc/passwd')", "table function read_text is not available"),
    ("SELECT * FROM read_blob('{warehouse_dir}/x')", "table function read_blob is not available"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv is not available"),
    ("SELECT * FROM '{warehouse_dir}/bronze/adt_events/data/x.parquet'", "is not available"),
    ("SELECT * FROM glob('{warehouse_dir}/*')", "table function glob is not available"),
    (
        "SELECT * FROM query('SELECT * FROM memory.bronze.adt_events')",
        "table function query is not available",
    ),
    ("SELECT * FROM query_table('memory.bronze.adt_events')", "table function query_table is not available"),
    (
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
        "table function json_execute_serialized_sql is not available",
    ),
    ("SELECT * FROM duckdb_secrets()", "table function duckdb_secrets is not available"),
    ("SELECT * FROM duckdb_settings()", "table function duckdb_settings is not available"),
    ("SELECT * FROM duckdb_databases()", "table function duckdb_databases is not available"),
    ("SELECT * FROM which_secret('s3://x', 's3')", "table function which_secret is not available"),
    ("SELECT getenv('AWS_SECRET_ACCESS_KEY')", "is not available"),
    ("SELECT current_setting('allowed_directories')", None),  # answered from PostgreSQL's settings only
    ("SELECT medlake_deid_token('{planted}')", "function medlake_deid_token is not available"),
    ("SELECT * FROM memory.bronze.adt_events", 'database "memory" is not available'),
    ("SELECT * FROM medlake_state.medlake_files", "permission denied for schema medlake_state"),
    ("SELECT * FROM system.main.duckdb_settings", 'database "system" is not available'),
    ("SET lock_configuration = false", "SET lock_configuration is refused"),
    ("SET enable_external_access = true", "SET enable_external_access is refused"),
    ("SET allowed_directories = ['/']", "SET allowed_directories is refused"),
    ("SET GLOBAL memory_limit = '100GB'", "SET GLOBAL is refused"),
    ("/* a comment first */ SET GLOBAL threads = 64", "SET GLOBAL is refused"),
    ("-- a comment first\nSET memory_limit = '100GB'", "SET memory_limit is refused"),
    ("PRAGMA memory_limit = '100GB'", "PRAGMA statements are refused"),
    ("PRAGMA enable_profiling", "PRAGMA statements are refused"),
    ("SELECT * FROM bronze.adt_events AT (VERSION => 1)", "use SET medlake.as_of"),
]


def test_every_door_a_select_could_open_is_closed(served, logs):
    lake = served.lake
    warehouse_dir = lake.settings.warehouse.removeprefix("file://")
    metadata = lake.catalog.load_table("bronze.adt_events").metadata_location
    before = lake_fingerprint(lake)
    with served.connect() as con:
        for sql, message in DOORS:
            text = sql.format(warehouse_dir=warehouse_dir, metadata=metadata, planted=PLANTED)
            if message is None:
                assert con.execute(text).fetchone() == (None,)
                continue
            error = refused(con, text)
            assert message in str(error), (text, str(error))
        # A refused SET changed nothing: the session still answers, with the server's settings.
        assert con.execute("SHOW statement_timeout").fetchone() == ("300000ms",)
    assert lake_fingerprint(lake) == before
    assert PLANTED not in logs()


def test_a_session_setting_stays_in_its_session(served):
    with served.connect() as first, served.connect() as second:
        first.execute("SET statement_timeout = 1500")
        assert first.execute("SHOW statement_timeout").fetchone() == ("1500ms",)
        assert second.execute("SHOW statement_timeout").fetchone() == ("300000ms",)
        # and a client cannot lengthen the server's limit
        first.execute("SET statement_timeout = '2h'")
        assert first.execute("SHOW statement_timeout").fetchone() == ("300000ms",)


def test_an_error_to_a_client_that_left_logs_no_query_text_or_values(served, logs):
    for sql in (
        f"SELECT * FROM silver.lab_results WHERE patient_id = '{PLANTED}' AND no_such_column = 1",
        f"SELECT count(*) FROM range(100000000000) WHERE '{PLANTED}' <> ''",
    ):
        sock = raw_login(served)
        send_query(sock, sql)
        sock.close()  # before reading the answer
    with served.connect() as con:  # the server is still serving
        assert con.execute("SELECT 1 AS alive").fetchone() == (1,)
        # a bound parameter (extended protocol) in a failing statement is not logged either
        with pytest.raises(psycopg.Error):
            con.execute(
                "SELECT * FROM silver.lab_results WHERE patient_id = %s AND no_such_column = 1", (PLANTED,)
            )
    time.sleep(1)  # let the abandoned sessions finish their (interrupted) work
    text = logs()
    assert PLANTED not in text
    assert "no_such_column" not in text


def test_a_startup_packet_claiming_4_gb_is_refused_before_anything_is_reserved(served):
    process = psutil.Process()
    before = process.memory_info().rss
    import socket

    for claim in (0x7FFFFFF0, 0xFFFFFFF0):
        sock = socket.create_connection((served.host, served.port), timeout=30)
        sock.sendall(struct.pack("!I", claim) + struct.pack("!i", 196608) + b"user\x00medlake\x00\x00")
        kind, body = read_message(sock)
        sock.close()
        assert kind == b"E"
        assert b"over the limit of 10000 bytes" in body or b"invalid startup packet length" in body
    # After authentication, a message over MEDLAKE_SQL_MAX_MESSAGE_BYTES is refused the same way.
    sock = raw_login(served)
    sock.sendall(b"Q" + struct.pack("!i", 0x7FFFFFF0))
    kind, body = read_message(sock)
    sock.close()
    assert kind == b"E" and b"over the limit of 16777216 bytes" in body
    assert process.memory_info().rss - before < 200 * 1024 * 1024


def test_failed_logins_back_off_per_address(lake, logs):
    with served_lake(lake, base_environ(), backoff_free_attempts=3, backoff_base_seconds=60) as served:
        for _ in range(4):
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                served.connect(password=PLANTED)
        # Locked out: even the right password is refused, unchecked, with a clear error.
        with pytest.raises(psycopg.OperationalError, match="too many failed logins from this address"):
            served.connect()
        with pytest.raises(psycopg.OperationalError, match="too many failed logins from this address"):
            served.connect("northwind_analyst")
    assert PLANTED not in logs()


def test_statement_timeout_stops_a_runaway_query_and_so_does_the_client_leaving(lake):
    with served_lake(lake, base_environ(), statement_timeout_seconds=2) as served:
        with served.connect() as con:
            error = refused(con, "SELECT count(*) FROM range(100000000000)")
            assert error.sqlstate == "57014"
            assert "canceling statement due to statement timeout" in str(error)
            assert con.execute("SELECT 42").fetchone() == (42,)  # the connection stays usable
        sock = raw_login(served)
        send_query(sock, "SELECT count(*) FROM range(100000000000) t1, range(10) t2")
        time.sleep(0.5)
        sock.close()
        served.server.audit.flush()
        deadline = time.monotonic() + 20
        outcomes: list = []
        while time.monotonic() < deadline and "client_gone" not in outcomes:
            time.sleep(0.3)
            served.server.audit.flush()
            with lake.ledger.engine.connect() as connection:
                outcomes = connection.execute(sa.text(f"SELECT outcome FROM {AUDIT_TABLE}")).scalars().all()
        assert "timeout" in outcomes
        assert "client_gone" in outcomes  # interrupted when the client left, long before the timeout


def test_a_cancel_request_stops_the_running_query(lake):
    """psycopg's cancel_safe() sends PostgreSQL's CancelRequest (pid and secret key) on a new connection. A
    cancel that arrives before the query starts does nothing (as in PostgreSQL), so it is repeated until
    the query ends; the statement timeout only bounds the test if cancelling failed."""
    with served_lake(lake, base_environ(), statement_timeout_seconds=60) as served, served.connect() as con:
        finished = threading.Event()

        def keep_cancelling() -> None:
            while not finished.wait(0.5):
                con.cancel_safe(timeout=20)  # cancel() holds the GIL, and this server runs in-process

        canceller = threading.Thread(target=keep_cancelling, daemon=True)
        canceller.start()
        try:
            error = refused(con, "SELECT count(*) FROM range(100000000000)")
        finally:
            finished.set()
            canceller.join()
        assert error.sqlstate == "57014"
        assert "canceling statement due to user request" in str(error)
        assert con.execute("SELECT 7").fetchone() == (7,)


def test_each_connection_has_its_own_memory_limit(lake):
    with served_lake(lake, base_environ(), memory_limit="64MB") as served, served.connect() as con:
        error = refused(con, "SELECT length(string_agg(range::VARCHAR, ',')) FROM range(30000000)")
        assert error.sqlstate == "53200"
        assert "Out of Memory" in str(error)
        assert con.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0] > 0


# --- tenancy ---


def _relations(con: psycopg.Connection) -> list[tuple[str, str]]:
    return con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
    ).fetchall()


def _facilities_and_counts(con: psycopg.Connection) -> dict[str, dict[str | None, int]]:
    """Rows per facility of every relation the login has (None: a relation without a facility column)."""
    columns: dict[str, set[str]] = {}
    for schema, table, column in con.execute(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns"
    ):
        columns.setdefault(f"{schema}.{table}", set()).add(column)
    found = {}
    for schema, table in _relations(con):
        name = f"{schema}.{table}"
        column = next((c for c in ("_facility", "facility_id", "facility") if c in columns[name]), None)
        if column is None:
            found[name] = {None: con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]}
        else:
            found[name] = dict(con.execute(f'SELECT "{column}", count(*) FROM {name} GROUP BY 1').fetchall())
    return found


def test_each_customer_sees_only_its_facilities_in_every_relation(served):
    with served.connect() as operator:
        everything = _facilities_and_counts(operator)
    expected_relations = {"bronze.lab_results", "silver.lab_results", "silver_deid.lab_results", "meta.files"}
    assert expected_relations | {"meta.sql_audit"} <= set(everything)
    assert any(name.startswith("quarantine.") for name in everything)
    assert any(name.startswith("gold.") for name in everything)
    every_facility = {facility for counts in everything.values() for facility in counts if facility}
    assert every_facility & NORTHWIND and every_facility & RIVERSIDE  # both customers have rows
    for user, own in (("northwind_analyst", NORTHWIND), ("riverside_analyst", RIVERSIDE)):
        with served.connect(user) as con:
            seen = _facilities_and_counts(con)
        assert "meta.sql_audit" not in seen
        assert expected_relations <= set(seen)
        # quarantine and gold too, each filtered to its facilities (not hidden)
        assert any(name.startswith("quarantine.") and set(counts) & own for name, counts in seen.items())
        assert any(name.startswith("gold.") and set(counts) & own for name, counts in seen.items())
        for name, counts in seen.items():
            assert set(counts) <= own, (user, name, counts)
            # exactly its facilities' rows: as many as the operator sees for them
            assert counts == {
                facility: n for facility, n in everything[name].items() if facility in own
            }, name


def test_the_deid_login_reads_only_deidentified_views_and_gold(served):
    with served.connect("research") as con:
        schemas = {schema for schema, _ in _relations(con)}
        assert schemas == {"silver_deid", "gold"}
        assert con.execute("SELECT count(*) FROM silver_deid.encounters").fetchone()[0] > 0
        for table in ("silver.lab_results", "bronze.adt_events", "meta.files", "quarantine.lab_results"):
            error = refused(con, f"SELECT count(*) FROM {table}")
            assert f"permission denied for schema {table.split('.')[0]}" in str(error)


def test_time_travel_is_filtered_too(served):
    lake = served.lake
    table = lake.catalog.load_table("silver.lab_results")
    first = table.history()[0].snapshot_id
    with served.connect() as operator:
        operator.execute(f"SET medlake.as_of = '{first}'")
        assert operator.execute("SHOW medlake.as_of").fetchone() == (str(first),)
        then = _facilities_and_counts(operator)
        operator.execute("RESET medlake.as_of")
        now = dict(
            operator.execute("SELECT facility_id, count(*) FROM silver.lab_results GROUP BY 1").fetchall()
        )
    # the first landing day only, then both
    assert 0 < sum(then["silver.lab_results"].values()) < sum(now.values())
    with served.connect("northwind_analyst") as con:
        con.execute(f"SET medlake.as_of = '{first}'")
        seen = _facilities_and_counts(con)
        error = refused(con, "SET medlake.as_of = 'yesterday-ish'")
        assert "neither a snapshot id nor an ISO timestamp" in str(error)
    assert {"bronze.lab_results", "silver.lab_results", "silver_deid.lab_results"} <= set(seen)
    for name, counts in seen.items():  # every relation as of then: exactly its facilities' rows of then
        assert counts == {facility: n for facility, n in then[name].items() if facility in NORTHWIND}, name


def test_the_audit_log_records_who_read_what_without_text_or_values(served):
    with served.connect("northwind_analyst") as con:
        rows = con.execute(
            f"SELECT count(*) FROM silver.lab_results WHERE patient_id <> '{PLANTED}'"
        ).fetchone()[0]
        refused(con, "SELECT * FROM read_text('/etc/passwd')")
    served.server.audit.flush()
    with served.connect() as operator:
        entries = operator.execute(
            "SELECT login, role, relations, rows, outcome, statement, sqlstate FROM meta.sql_audit "
            "WHERE login = 'northwind_analyst' ORDER BY id"
        ).fetchall()
        dump = operator.execute("SELECT * FROM meta.sql_audit").fetchall()
    assert ("northwind_analyst", "customer", "silver.lab_results", 1, "ok", "select", None) in entries
    assert ("northwind_analyst", "customer", "", 0, "refused", "refused", "42501") in entries
    assert rows > 0
    assert PLANTED not in repr(dump) and "read_text" not in repr(dump)
    with served.connect("riverside_analyst") as con:
        assert "does not exist" in str(refused(con, "SELECT * FROM meta.sql_audit"))  # not in its database
        names = {table for schema, table in _relations(con) if schema == "meta"}
        assert "sql_audit" not in names and "files" in names


# --- clients ---


def test_psql_lists_tables_with_descriptions_and_runs_queries(served):
    env = {**os.environ, "PGPASSWORD": served.passwords["medlake"], "PGCONNECT_TIMEOUT": "20"}
    command = ["psql", served.dsn(sslmode="disable"), "-X", "-A", "-t"]
    result = subprocess.run(
        [
            *command,
            "-c",
            r"\dt silver.*",
            "-c",
            r"\d+ silver.lab_results",
            "-c",
            r"\dn",
            "-c",
            r"\l",
            "-c",
            "SELECT count(*) FROM silver.lab_results",
            "-c",
            "SELECT discharge_ts - admit_ts FROM silver.encounters WHERE discharge_ts IS NOT NULL LIMIT 1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "silver|lab_results|table|medlake" in lines
    assert any(line.startswith("test_code|character varying|") and "LOINC code" in line for line in lines)
    assert {"bronze|medlake", "silver|medlake", "silver_deid|medlake", "meta|medlake"} <= set(lines)
    assert not any(line.startswith("pg_catalog|") for line in lines)
    assert any(line.startswith("medlake|medlake|UTF8|") for line in lines)
    assert any(":" in line and line.count(":") == 2 for line in lines[-1:])  # an interval, e.g. 04:41:18
    # The same descriptions are the Iceberg tables' column docs, set by the pipeline's loads.
    catalog = served.lake.catalog
    for identifier in ("bronze.lab_results", "silver.lab_results"):
        assert catalog.load_table(identifier).schema().find_field("test_code").doc == "LOINC code"
    assert catalog.load_table("silver.encounters").schema().find_field("event_count").doc


def test_psycopg_types_parameters_intervals_and_prepared_statements(served):
    with served.connect() as con:
        row = con.execute(
            "SELECT result_ts, _record, _landing_day, _deleted FROM silver.lab_results ORDER BY ALL LIMIT 1"
        ).fetchone()
        assert [type(value).__name__ for value in row] == ["datetime", "int", "date", "bool"]
        assert row[0].tzinfo is not None
        los = con.execute(
            "SELECT discharge_ts - admit_ts AS los FROM silver.encounters "
            "WHERE discharge_ts IS NOT NULL LIMIT 1"
        ).fetchone()[0]
        assert type(los).__name__ == "timedelta"
        facility = "F0001"
        query = "SELECT count(*) FROM silver.lab_results WHERE facility_id = %s AND _record >= %s"
        counts = {con.execute(query, (facility, 0), prepare=True).fetchone()[0] for _ in range(3)}
        assert counts == {con.execute(query, (facility, 0), prepare=False).fetchone()[0]}
        assert con.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0] > 0
        cursor = con.execute("SELECT count(*) FROM silver.lab_results")
        assert cursor.description[0].name == "count"


def test_sqlalchemy_psycopg2_and_pandas(served):
    url = sa.URL.create(
        "postgresql+psycopg2", "medlake", served.passwords["medlake"], served.host, served.port, "medlake"
    )
    engine = sa.create_engine(url, connect_args={"sslmode": "disable"})
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("show transaction isolation level").scalar() == "read committed"
            assert connection.exec_driver_sql("show standard_conforming_strings").scalar() == "on"
            assert (
                connection.exec_driver_sql(
                    "SELECT pg_get_serial_sequence('silver.lab_results', 'order_id')"
                ).scalar()
                is None
            )
            assert engine.dialect.server_version_info[0] == 16
            inspector = sa.inspect(connection)
            assert {"lab_results", "adt_events", "encounters"} <= set(
                inspector.get_table_names(schema="silver")
            )
            columns = {
                column["name"]: column for column in inspector.get_columns("lab_results", schema="silver")
            }
            assert columns["test_code"]["comment"] == "LOINC code"
            # a gold table's description is its report's header
            comment = inspector.get_table_comment("bed_availability", schema="gold")["text"]
            assert comment.startswith("Beds by status per facility and unit")
            frame = pd.read_sql(
                sa.text(
                    "SELECT facility_id, count(*) AS n FROM silver.lab_results "
                    "WHERE facility_id = :f GROUP BY 1"
                ),
                connection,
                params={"f": "F0001"},
            )
            assert list(frame.columns) == ["facility_id", "n"] and frame["n"].iloc[0] > 0
            stays = pd.read_sql("SELECT discharge_ts - admit_ts AS los FROM silver.encounters", connection)
            assert str(stays["los"].dtype).startswith("timedelta")
    finally:
        engine.dispose()


def test_concurrent_connections_each_get_their_rows(served):
    with served.connect() as con:
        expected = con.execute("SELECT count(*) FROM bronze.lab_results").fetchone()[0]

    def count_labs(_: int) -> int:
        with served.connect() as con:
            return len(con.execute("SELECT _archive, _member, _record FROM bronze.lab_results").fetchall())

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(count_labs, range(3))) == [expected] * 3


JDBC_DRIVER = "/usr/share/java/postgresql.jar"  # Debian's libpostgresql-jdbc-java (.ci/run installs it)


def test_jdbc_database_metadata_lists_tables_keys_types_functions_and_queries(served):
    """The PostgreSQL JDBC driver as Tableau, Metabase and DBeaver use it (jdbc/BiCatalog.java, the JDK's
    single-file launcher): every DatabaseMetaData call BI tools make, then prepared and interval queries."""
    program = os.path.join(os.path.dirname(__file__), "jdbc", "BiCatalog.java")
    url = f"jdbc:postgresql://{served.host}:{served.port}/medlake?sslmode=disable"
    result = subprocess.run(
        ["java", "-cp", JDBC_DRIVER, program, url, "medlake", "silver", "lab_results"],
        env={**os.environ, "PGPASSWORD": served.passwords["medlake"]},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    found = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row for row in found if row[0] == "error"] == []
    calls = {row[1] for row in found if row[0] == "ok"}
    assert {
        "getTables",
        "getPrimaryKeys",
        "getIndexInfo",
        "getTypeInfo",
        "getImportedKeys",
        "getFunctions",
    } <= calls
    tables = {row[1]: row for row in found if row[0] == "table"}
    assert tables["silver.lab_results"][2] == "TABLE"
    assert tables["silver.lab_results"][3].startswith("Laboratory results")  # REMARKS from the YAML
    columns = {row[1]: row for row in found if row[0] == "column"}
    assert columns["result_ts"][2] == "timestamptz"
    assert columns["test_code"][3] == "LOINC code"
    assert ["type", "varchar"] in found
    with served.connect() as con:
        expected = con.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0]
    assert ["count", str(expected)] in found
    assert any(row[0] == "interval" and row[1].count(":") == 2 for row in found)


def _odbc_connection_string(served, user: str = "medlake") -> str:
    import glob

    drivers = glob.glob("/usr/lib/*/odbc/psqlodbcw.so") + glob.glob("/usr/lib/odbc/psqlodbcw.so")
    assert drivers, "psqlODBC is missing: scripts/ensure_test_clients.sh installs odbc-postgresql"
    return (
        f"DRIVER={{{drivers[0]}}};SERVER={served.host};PORT={served.port};DATABASE=medlake;"
        f"UID={user};PWD={served.passwords[user]};SSLmode=disable"
    )


def test_psqlodbc_parameters_autocommit_off_and_tables(served):
    """psqlODBC (Excel, PowerBI's ODBC path) through unixODBC and pyodbc: text parameters (type 25), and
    with autocommit off the driver wraps statements in BEGIN and SAVEPOINTs, rolling back to one after an
    error; the connection must stay usable."""
    import pyodbc

    with served.connect() as con:
        expected = con.execute(
            "SELECT count(*) FROM silver.lab_results WHERE facility_id = 'F0001'"
        ).fetchone()[0]
    connection = pyodbc.connect(_odbc_connection_string(served), autocommit=False)
    try:
        cursor = connection.cursor()
        query = "SELECT count(*) FROM silver.lab_results WHERE facility_id = ? AND _record >= ?"
        assert cursor.execute(query, "F0001", 0).fetchone()[0] == expected
        with pytest.raises(pyodbc.Error, match="permission denied for schema nowhere"):
            cursor.execute("SELECT * FROM nowhere.t")
        assert cursor.execute(query, "F0001", 0).fetchone()[0] == expected  # usable after the error
        tables = {row.table_name for row in cursor.tables(schema="silver", tableType="TABLE")}
        assert {"lab_results", "adt_events", "encounters"} <= tables
        connection.commit()
    finally:
        connection.close()
    autocommit = pyodbc.connect(_odbc_connection_string(served), autocommit=True)
    try:
        assert autocommit.cursor().execute(query, "F0001", 0).fetchone()[0] == expected
    finally:
        autocommit.close()


# Npgsql (PowerBI's PostgreSQL driver) loads the server's types right after connecting, as one simple-query
# batch: version(), then types, composite fields and enum labels (npgsql/load_types.sql: the text Npgsql's
# PostgresDatabaseInfo.GenerateLoadTypesQuery builds with ranges and multiranges on and table composites
# off), since .NET cannot be installed here.
NPGSQL_LOAD_TYPES = (Path(__file__).parent / "npgsql" / "load_types.sql").read_text()


def test_npgsql_type_loading_batch_on_connect(served):
    """Npgsql's startup batch over the simple query protocol, read as Npgsql reads it: four result sets,
    the version string, and base types with their arrays (arrays recognised by typreceive = array_recv)."""
    sock = raw_login(served)
    send_query(sock, NPGSQL_LOAD_TYPES)
    results: list[list[list[str | None]]] = []
    errors = []
    while True:
        kind, body = read_message(sock)
        if kind == b"T":
            results.append([])
        elif kind == b"D":
            count, offset, row = struct.unpack_from("!h", body)[0], 2, []
            for _ in range(count):
                size = struct.unpack_from("!i", body, offset)[0]
                offset += 4
                row.append(None if size == -1 else body[offset : offset + size].decode())
                offset += max(size, 0)
            results[-1].append(row)
        elif kind == b"E":
            errors.append(body)
        elif kind == b"Z":
            break
    sock.close()
    assert errors == []
    assert len(results) == 4
    assert results[0][0][0].startswith("PostgreSQL 16.0")
    types = {row[2]: row for row in results[1]}
    assert types["int4"][:5] == ["pg_catalog", "23", "int4", "b", "f"]
    assert types["_int4"][3] == "a" and types["_int4"][5] == "23"  # an array of int4
    assert {"varchar", "timestamptz", "numeric", "interval", "bool", "date", "record"} <= set(types)
    assert results[2] == [] and results[3] == []


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1, made by the test."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_with_scram_and_plain_connections_refused(lake, tmp_path):
    cert, key = _self_signed(tmp_path)
    with served_lake(lake, base_environ(), tls_cert=cert, tls_key=key) as served:
        env = {**os.environ, "PGPASSWORD": served.passwords["northwind_analyst"], "PGCONNECT_TIMEOUT": "20"}
        result = subprocess.run(
            [
                "psql",
                served.dsn("northwind_analyst", sslmode="require"),
                "-X",
                "-A",
                "-t",
                "-c",
                r"\conninfo",
                "-c",
                "SELECT count(*) > 0 FROM silver.lab_results",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "SSL connection (protocol: TLSv1." in result.stdout
        assert result.stdout.splitlines()[-1] == "t"
        with served.connect("northwind_analyst", sslmode="require") as con:
            assert con.info.pgconn.ssl_in_use
        with pytest.raises(psycopg.OperationalError, match="requires TLS"):
            served.connect("northwind_analyst", sslmode="disable")


def test_md5_only_when_configured(lake):
    with served_lake(lake, base_environ(), auth_method="md5") as served, served.connect() as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
    with served_lake(lake, base_environ()) as served:
        # SCRAM by default: a client that insists on MD5 cannot log in.
        with pytest.raises(psycopg.OperationalError):
            served.connect(require_auth="md5")
        with served.connect(require_auth="scram-sha-256") as con:
            assert con.execute("SELECT 1").fetchone() == (1,)


def test_postgres_ledger_is_read_through_a_role_that_cannot_write(tmp_path):
    """With the PostgreSQL catalog: `postgres_execute` is refused, and even run straight on a client's
    database (the allow-list bypassed) it cannot write, because DuckDB holds only a SELECT-only role; a
    ledger URL whose role could write is refused at start."""
    import uuid
    from datetime import date

    from sqlalchemy.engine import make_url

    from medlake_assets.lake.ledger import LandedFile
    from medlake_assets.serving.pgwire import ServeError, check_ledger_role
    from medlake_assets.serving.pgwire.config import load_serve_settings
    from medlake_assets.serving.pgwire.database import open_login_database
    from medlake_assets.spec.access import load_access
    from medlake_assets_tests.lake_helpers import local_settings, open_lake
    from medlake_assets_tests.postgres import POSTGRES_ENV
    from medlake_dev.workers import scratch_database

    server_url = os.environ[POSTGRES_ENV]
    role, role_password = f"medlake_reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with scratch_database(server_url) as catalog_url:
        lake = open_lake(local_settings(tmp_path / "home", MEDLAKE_CATALOG_URL=catalog_url))
        objects = [
            LandedFile(
                "landing",
                f"landing/lab_results/2026/11/20/F0001/{i}.zip",
                f"e{i}",
                10,
                "lab_results",
                "F0001",
                date(2026, 11, 20),
            )
            for i in range(3)
        ]
        lake.ledger.register(objects)
        admin = sa.create_engine(catalog_url)
        with admin.begin() as connection:
            connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{role_password}'"))
            connection.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            connection.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
            connection.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
        reader_url = make_url(catalog_url).set(username=role, password=role_password)
        reader = reader_url.render_as_string(hide_password=False)
        try:
            with pytest.raises(ServeError, match="MEDLAKE_SQL_LEDGER_URL: the role"):
                check_ledger_role(catalog_url)  # the catalog's own role can write
            check_ledger_role(reader)
            environ = {**base_environ(), "MEDLAKE_SQL_LEDGER_URL": reader}
            serve_settings = load_serve_settings(lake.settings, environ)
            access = load_access(lake.settings.access_dir)
            database = open_login_database(lake, access, access.login("medlake"), serve_settings)
            try:
                assert database.con.execute("SELECT count(*) FROM meta.files").fetchone() == (3,)
                with pytest.raises(duckdb.Error, match="read-only transaction"):
                    database.con.execute(
                        "SELECT * FROM postgres_execute('medlake_state', 'DELETE FROM medlake_files')"
                    )
                # The escape from the read-only attachment: COMMIT first. The role stops it.
                with pytest.raises(duckdb.Error, match="permission denied for table medlake_files"):
                    database.con.execute(
                        "SELECT * FROM postgres_execute('medlake_state', 'COMMIT; DELETE FROM medlake_files')"
                    )
            finally:
                database.close()
            with served_lake(lake, environ) as served, served.connect() as con:
                error = refused(
                    con,
                    "SELECT * FROM postgres_execute('medlake_state', " "'COMMIT; DELETE FROM medlake_files')",
                )
                assert "table function postgres_execute is not available" in str(error)
                assert con.execute("SELECT count(*) FROM meta.files").fetchone() == (3,)
            with admin.connect() as connection:
                assert connection.execute(sa.text("SELECT count(*) FROM medlake_files")).scalar() == 3
        finally:
            lake.ledger.close()
            with admin.begin() as connection:
                connection.execute(sa.text(f"DROP OWNED BY {role}"))
            admin.dispose()
    with sa.create_engine(server_url).begin() as connection:
        connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))


SUPERSET_VENV = Path(__file__).resolve().parents[2] / ".venv-superset"  # `make superset-venv`


@pytest.mark.superset  # `make test-superset`, not in test-e2e or CI: its environment and starts are slow
def test_superset_test_db_and_a_chart_query(served, tmp_path):
    """Apache Superset, installed in its own environment (its pins differ from ours): `superset test-db`
    passes connectivity and every inspector call, then stops at its engine test that creates a table,
    which the read-only endpoint refuses; a chart's time-grain query runs for a customer login."""
    superset = SUPERSET_VENV / "bin" / "superset"
    assert superset.exists(), "Superset's environment is missing: run `make superset-venv`"
    env = {**os.environ, "SUPERSET_HOME": str(tmp_path), "SUPERSET_SECRET_KEY": "synthetic-" + "k" * 40}
    password = served.passwords["medlake"]
    uri = f"postgresql+psycopg2://medlake:{password}@{served.host}:{served.port}/medlake?sslmode=disable"
    result = subprocess.run(
        [str(superset), "test-db", uri], input="N\n", env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert "Connected successfully!" in output, output[-3000:]
    for call in (
        "get_schema_names",
        "get_table_names",
        "get_columns",
        "get_table_comment",
        "get_pk_constraint",
        "get_foreign_keys",
        "get_indexes",
    ):
        assert f"{call}: True" in output, call
    assert "sql> SELECT 1;\n> 1" in output
    # Its last test writes a table: refused, as it must be on this endpoint.
    assert "CREATE statements are refused" in output
    customer = served.passwords["northwind_analyst"]
    uri = f"postgresql+psycopg2://northwind_analyst:{customer}@{served.host}:{served.port}/medlake?sslmode=disable"
    chart = subprocess.run(
        [
            str(SUPERSET_VENV / "bin" / "python"),
            str(Path(__file__).parent / "superset" / "chart_query.py"),
            uri,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chart.returncode == 0, chart.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in chart.stdout.splitlines() if " " in line)
    with served.connect("northwind_analyst") as con:
        expected = con.execute("SELECT count(*) FROM silver.lab_results").fetchone()[0]
    assert int(lines["total"]) == expected
    assert set(lines["facilities"].split(",")) <= NORTHWIND


@pytest.mark.s3
def test_warehouse_on_s3_is_readable_while_other_paths_are_not(tmp_path, s3_endpoint, s3_bucket):
    """A lake whose warehouse is on S3 (a table written with pyiceberg, no ingestion needed): the
    connection's database reads it through httpfs, and no other S3 path."""
    import pyarrow as pa

    from medlake_assets_tests.lake_helpers import local_settings, open_lake
    from medlake_assets_tests.serving.serving_lake import ARROW_SCHEMA, SCHEMA, lab_rows

    settings = local_settings(
        tmp_path / "home", MEDLAKE_STORE_URL=f"s3://{s3_bucket}/medlake", MEDLAKE_S3_ENDPOINT_URL=s3_endpoint
    )
    lake = open_lake(settings)
    rows = lab_rows(seed=5, count=40)
    lake.catalog.create_table("silver.lab_results", schema=SCHEMA).append(
        pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    )
    with served_lake(lake, base_environ()) as served, served.connect() as con:
        assert con.execute("SELECT count(*), sum(_record) FROM silver.lab_results").fetchone() == (
            40,
            sum(row["_record"] for row in rows),
        )
        error = refused(con, f"SELECT * FROM read_csv('s3://{s3_bucket}/elsewhere.csv')")
        assert "table function read_csv is not available" in str(error)
        error = refused(con, f"SELECT * FROM 's3://{s3_bucket}/medlake/warehouse/x.parquet'")
        assert "is not available" in str(error)
