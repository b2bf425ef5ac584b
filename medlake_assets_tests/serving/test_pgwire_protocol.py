"""The PostgreSQL protocol codec, the allow-list and the login backoff on their own (no server, no lake)."""

from __future__ import annotations

import struct
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import duckdb
import pyarrow as pa
import pytest

from medlake_assets.serving.pgwire import pgtypes
from medlake_assets.serving.pgwire import protocol as wire
from medlake_assets.serving.pgwire.auth import LoginBackoff, make_secret, parse_scram_verifier, scram_verifier
from medlake_assets.serving.pgwire.statements import (
    Catalog,
    Refused,
    builtin_functions,
    check_query,
    session_command,
    split,
)


def test_a_startup_length_over_the_limit_is_refused_before_reading():
    with pytest.raises(wire.MessageTooLarge, match="over the limit of 10000 bytes"):
        wire.check_length(0xFFFFFFF0 & 0x7FFFFFFF, wire.MAX_STARTUP_BYTES, "startup packet")
    with pytest.raises(wire.ProtocolError, match="invalid"):
        wire.check_length(3, 100, "message")
    assert wire.check_length(12, 100, "message") == 8


def test_startup_packets_decode():
    body = struct.pack("!i", wire.PROTOCOL_3) + b"user\x00alice\x00database\x00medlake\x00\x00"
    assert wire.decode_startup(body).parameters == {"user": "alice", "database": "medlake"}
    assert wire.decode_startup(struct.pack("!i", wire.SSL_REQUEST)).code == wire.SSL_REQUEST
    cancel = wire.decode_startup(struct.pack("!iii", wire.CANCEL_REQUEST, 7, 9))
    assert (cancel.cancel_pid, cancel.cancel_secret) == (7, 9)
    with pytest.raises(wire.ProtocolError, match="not terminated"):
        wire.decode_startup(struct.pack("!i", wire.PROTOCOL_3) + b"user\x00alice")
    with pytest.raises(wire.ProtocolError, match="unsupported frontend protocol 2.0"):
        wire.decode_startup(struct.pack("!i", 2 << 16))


def test_bind_decodes_nulls_formats_and_values_and_short_bodies_fail():
    body = b"portal\x00stmt\x00" + struct.pack("!hh", 1, 1) + struct.pack("!h", 2)
    body += struct.pack("!i", 4) + struct.pack("!i", 42) + struct.pack("!i", -1) + struct.pack("!hh", 1, 0)
    bind = wire.decode_bind(body)
    assert (bind.portal, bind.statement, bind.parameters, bind.result_formats) == (
        "portal",
        "stmt",
        (struct.pack("!i", 42), None),
        (0,),
    )
    with pytest.raises(wire.ProtocolError, match="shorter than its fields"):
        wire.decode_bind(body[:-6])


def test_backend_messages_have_postgres_layouts():
    assert wire.ready_for_query("I") == b"Z\x00\x00\x00\x05I"
    assert (
        wire.data_row([b"ab", None])
        == b"D" + struct.pack("!ih", 4 + 2 + 4 + 2 + 4, 2) + b"\x00\x00\x00\x02ab\xff\xff\xff\xff"
    )
    error = wire.error_response("42501", "permission denied for schema silver")
    assert (
        error[0:1] == b"E" and b"C42501\x00" in error and b"Mpermission denied for schema silver\x00" in error
    )


@pytest.mark.parametrize(
    ("value", "arrow_type", "text"),
    [
        (True, pa.bool_(), b"t"),
        (12, pa.int64(), b"12"),
        (1.5, pa.float64(), b"1.5"),
        (float("nan"), pa.float64(), b"NaN"),
        (Decimal("12.30"), pa.decimal128(5, 2), b"12.30"),
        (date(2026, 11, 20), pa.date32(), b"2026-11-20"),
        (
            datetime(2026, 11, 20, 7, 5, 1, tzinfo=UTC),
            pa.timestamp("us", "UTC"),
            b"2026-11-20 07:05:01+00:00",
        ),
        (timedelta(days=2, hours=3, minutes=4, seconds=5), pa.duration("us"), b"2 days 03:04:05"),
        (
            pa.MonthDayNano([14, 3, 3_723_500_000_000]),
            pa.month_day_nano_interval(),
            b"1 year 2 mons 3 days 01:02:03.5",
        ),
        (["a", None, "b c"], pa.list_(pa.string()), b'{a,NULL,"b c"}'),
        (b"\x01\xff", pa.binary(), b"\\x01ff"),
    ],
)
def test_text_encoding_of_result_values(value, arrow_type, text):
    assert pgtypes.text_column(pa.array([value, None], arrow_type)) == [text, None]


def test_interval_columns_have_the_interval_type_and_binary_layout():
    column = pa.array([pa.MonthDayNano([1, 2, 3_000])], pa.month_day_nano_interval())
    assert pgtypes.type_oid(column.type) == (pgtypes.INTERVAL, -1)
    assert pgtypes.binary_column(column, pgtypes.INTERVAL) == [struct.pack("!qii", 3, 2, 1)]


@pytest.mark.parametrize("number", ["0", "1", "-12345.678", "0.0001", "10000", "123456789.000001", "1E+5"])
def test_numeric_binary_round_trips(number):
    value = Decimal(number)
    assert pgtypes.BINARY_PARAMETERS[pgtypes.NUMERIC](pgtypes._numeric_binary(value)) == value


def test_parameters_decode_by_type_and_bad_values_do_not_echo_the_value():
    assert pgtypes.decode_parameter(b"42", pgtypes.INT4, binary=False) == 42
    assert pgtypes.decode_parameter(b"F0001", pgtypes.TEXT, binary=False) == "F0001"
    assert pgtypes.decode_parameter(struct.pack("!q", 7), pgtypes.INT8, binary=True) == 7
    assert pgtypes.decode_parameter(b"2026-11-20", pgtypes.DATE, binary=False) == date(2026, 11, 20)
    with pytest.raises(wire.ProtocolError) as caught:
        pgtypes.decode_parameter(b"PATIENT-VALUE-77", pgtypes.INT4, binary=False)
    assert "PATIENT-VALUE-77" not in str(caught.value)


def test_scram_verifiers_parse_and_plain_passwords_get_one():
    verifier = scram_verifier("s3cret")
    salt, stored, server, iterations = parse_scram_verifier(verifier)
    assert iterations == 4096 and len(stored) == len(server) == 32 and salt
    assert make_secret("alice", verifier).md5 is None  # a verifier cannot answer MD5
    assert make_secret("alice", "s3cret").md5 is not None


def test_login_backoff_doubles_after_the_free_attempts_and_clears_on_success():
    now = [1000.0]
    backoff = LoginBackoff(free_attempts=2, base_seconds=1, max_seconds=8, clock=lambda: now[0])
    assert [backoff.failed("10.0.0.1") for _ in range(6)] == [0, 0, 1, 2, 4, 8]
    assert backoff.wait_left("10.0.0.1") == 8
    assert backoff.wait_left("10.0.0.2") == 0  # per address
    now[0] += 8
    assert backoff.wait_left("10.0.0.1") == 0
    backoff.succeeded("10.0.0.1")
    assert backoff.failed("10.0.0.1") == 0


# --- the allow-list ---


@pytest.fixture(scope="module")
def parser():
    con = duckdb.connect()
    catalog = Catalog(
        readable_schemas=frozenset({"silver", "gold"}),
        pg_relations=frozenset({"pg_class", "pg_namespace"}),
        information_schema_relations=frozenset({"tables"}),
        pg_functions=frozenset({"version", "format_type", "current_setting"}),
        builtin_functions=builtin_functions(con),
    )
    return con, catalog


def test_statements_split_on_semicolons_outside_literals_and_comments():
    assert split("SELECT ';'; /* ; */ SELECT 2 -- ;\n;") == ["SELECT ';'", " /* ; */ SELECT 2 -- ;\n"]
    assert split("  ;  -- nothing") == []


@pytest.mark.parametrize(
    ("sql", "kind", "setting"),
    [
        ("/* hidden */ SET application_name = 'x'", "set", "application_name"),
        ("SET SESSION statement_timeout TO 5000", "set", "statement_timeout"),
        ("SET medlake.as_of = '2026-11-20T08:00:00Z'", "set", "medlake.as_of"),
        ("SET TIME ZONE 'UTC'", "set", "timezone"),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED", "set", "transaction"),
        ("RESET ALL", "reset", "all"),
        ("show transaction isolation level", "show", "transaction_isolation"),
        ("SAVEPOINT _EXEC_SVP_1", "transaction", ""),
        ("ROLLBACK TO SAVEPOINT a", "transaction", ""),
        ("BEGIN ISOLATION LEVEL READ COMMITTED", "transaction", ""),
        ("DISCARD ALL", "noop", ""),
    ],
)
def test_session_commands_are_told_apart_by_tokens(sql, kind, setting):
    command = session_command(sql)
    assert command is not None and command.kind == kind and command.setting == setting


def test_set_global_is_refused_even_after_a_comment():
    with pytest.raises(Refused, match="SET GLOBAL is refused"):
        session_command("/* looks harmless */ SET GLOBAL memory_limit = '100GB'")


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/x.csv'", "EXPLAIN ANALYZE runs its statement"),
        ("EXPLAIN (ANALYZE) SELECT 1", "EXPLAIN ANALYZE runs its statement"),
        ("PRAGMA memory_limit='100GB'", "PRAGMA statements are refused"),
        ("CREATE VIEW silver.x AS SELECT 1", "CREATE statements are refused"),
        ("COPY silver.t TO '/tmp/x'", "COPY statements are refused"),
        ("ATTACH '/tmp/x.db' AS x", "ATTACH statements are refused"),
        ("SELECT * FROM read_parquet('/lake/warehouse/bronze/x.parquet')", "table function read_parquet"),
        ("SELECT * FROM iceberg_scan('/lake/warehouse/bronze/metadata.json')", "table function iceberg_scan"),
        ("SELECT * FROM read_text('/etc/passwd')", "table function read_text"),
        ("SELECT * FROM query('SELECT 1')", "table function query"),
        (
            "SELECT * FROM postgres_execute('medlake_state', 'DELETE FROM x')",
            "table function postgres_execute",
        ),
        ("SELECT * FROM json_execute_serialized_sql('{}')", "table function json_execute_serialized_sql"),
        ("SELECT * FROM duckdb_secrets()", "table function duckdb_secrets"),
        ("SELECT * FROM glob('/**')", "table function glob"),
        ("SELECT getenv('AWS_SECRET_ACCESS_KEY')", "function getenv is not available"),
        ("SELECT getvariable('x')", "function getvariable is not available"),
        ("SELECT medlake_deid_token('P1')", "function medlake_deid_token is not available"),
        ("SELECT * FROM '/etc/passwd'", 'relation "/etc/passwd" is not available'),
        ("SELECT * FROM memory.silver.lab_results", 'database "memory" is not available'),
        ("SELECT * FROM medlake_state.medlake_files", "permission denied for schema medlake_state"),
        ("SELECT * FROM bronze.adt_events", "permission denied for schema bronze"),
        ("SELECT * FROM pg_catalog.pg_settings", "pg_catalog.pg_settings is not available"),
        ("SELECT * FROM silver.t AT (VERSION => 1)", r"AT \(VERSION/TIMESTAMP\) is refused"),
        ("SHOW ALL TABLES", "only SHOW TABLES"),
        ("DESCRIBE bronze.adt_events", "permission denied for schema bronze"),
        ("SELECT 1; DROP TABLE silver.t", "one statement at a time"),
    ],
)
def test_queries_outside_the_allow_list_are_refused(parser, sql, message):
    con, catalog = parser
    with pytest.raises(Refused, match=message):
        check_query(con, sql, catalog)


def test_allowed_queries_report_relations_and_postgres_column_names(parser):
    con, catalog = parser
    statement = check_query(
        con,
        "WITH r AS (SELECT * FROM silver.lab_results) SELECT count(*), max(x) AS top, sum(y) FROM r",
        catalog,
    )
    assert statement.relations == ("silver.lab_results",)
    assert statement.column_names == {0: "count", 2: "sum"}


def test_catalog_queries_are_rewritten_to_the_emulated_catalog(parser):
    con, catalog = parser
    statement = check_query(
        con,
        "SELECT pg_catalog.pg_class.relname, pg_catalog.version() FROM pg_catalog.pg_class "
        "WHERE relname OPERATOR(pg_catalog.~) '^x$' COLLATE pg_catalog.default",
        catalog,
    )
    assert "medlake_pg" in statement.sql and "pg_catalog" not in statement.sql
