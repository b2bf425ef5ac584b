"""`medlake serve-sql`: the lake's DuckDB views over the PostgreSQL wire protocol, read-only, with a password.

The protocol is buenavista's (Apache-2.0, a socketserver implementation of PostgreSQL protocol v3 over
DuckDB: simple and extended query, MD5 password authentication, a few `pg_catalog` rewrites). This module
adds what serving the lake needs on top of it:

- an allow-list of statement kinds, from DuckDB's own parser (`extract_statements`): SELECT (which covers
  SHOW, DESCRIBE, SUMMARIZE, FROM), EXPLAIN, SET and transaction statements; everything else is refused
  with SQLSTATE 25006 (read_only_sql_transaction), and so is SET of a server-wide DuckDB setting;
- DuckDB itself locked to the warehouse: `enable_external_access = false` with `allowed_directories` set to
  the warehouse, so no statement can read or write any other file, and it cannot be turned back on;
- one user and a timing-safe password comparison, the connection closed on a wrong password;
- error responses with a severity and SQLSTATE, which clients need to show a clear error;
- the catalog spellings psql's \\dn, \\dv, \\d and BI tools send, rewritten for DuckDB's `pg_catalog`;
- typed parameters (text, int, float, bool) and timestamptz results;
- no query text or error text in the server log: a literal in a WHERE clause can be a patient's value.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import socket
import struct
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
from buenavista import postgres as buenavista_postgres
from buenavista.backends.duckdb import DuckDBConnection, DuckDBQueryResult, DuckDBSession
from buenavista.postgres import BuenaVistaHandler, BuenaVistaServer, BVBuffer, BVContext, ServerResponse

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.serving.sql import connect

log = logging.getLogger(__name__)

ALLOWED_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.SET,
        duckdb.StatementType.TRANSACTION,
    }
)
_SET_NAME = re.compile(r"^\s*(?:SET|RESET)\s+(?:SESSION\s+|LOCAL\s+)?\"?(\w+)", re.IGNORECASE)


class ReadOnlyError(MedlakeError):
    """A statement that would change something, refused by the read-only endpoint."""


class AuthenticationError(MedlakeError):
    """Wrong user or password."""


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    """The parsed statements of `sql`; `ReadOnlyError` if any is not a read (parse errors propagate)."""
    statements = con.extract_statements(sql)
    refused = sorted(
        {statement.type.name for statement in statements if statement.type not in ALLOWED_STATEMENTS}
    )
    if refused:
        raise ReadOnlyError(
            f"medlake serve-sql is read-only: {', '.join(refused)} statements are refused "
            "(allowed: SELECT, SHOW, DESCRIBE, EXPLAIN, SET, BEGIN/COMMIT/ROLLBACK)"
        )
    return statements


def _sqlstate(error: BaseException) -> str:
    if isinstance(error, ReadOnlyError):
        return "25006"
    if isinstance(error, AuthenticationError):
        return "28P01"
    if isinstance(error, duckdb.ParserException):
        return "42601"
    if isinstance(error, duckdb.CatalogException | duckdb.BinderException):
        return "42P01" if "does not exist" in str(error) else "42703"
    if isinstance(error, duckdb.PermissionException):
        return "42501"
    return "XX000"


# buenavista has no timestamptz: a key of our own in its type table, so clients get type 1184 and the offset.
TIMESTAMPTZ = "timestamptz"
_POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def _extend_buenavista_types() -> None:
    # psycopg sends bool parameters in binary; buenavista's table of binary parameter types lacks it.
    buenavista_postgres.TYPE_OIDS.setdefault(16, ("BOOLOID", "!?", False))
    buenavista_postgres.BVTYPE_TO_PGTYPE.setdefault(
        TIMESTAMPTZ,
        (
            1184,
            lambda value: value.isoformat(sep=" "),
            lambda value: struct.pack("!q", (value - _POSTGRES_EPOCH) // timedelta(microseconds=1)),
        ),
    )


class LakeQueryResult(DuckDBQueryResult):
    """A DuckDB result whose timezone-aware timestamp columns go out as timestamptz."""

    def __init__(self, rbr: pa.RecordBatchReader | None = None, status: str | None = None):
        super().__init__(rbr, status)
        if rbr is not None:
            self.bvtypes = [
                TIMESTAMPTZ if pa.types.is_timestamp(field.type) and field.type.tz else bvtype
                for field, bvtype in zip(rbr.schema, self.bvtypes, strict=True)
            ]


# psql's \d family and BI tools' catalog queries use PostgreSQL spellings DuckDB lacks.
_CATALOG_REWRITES = (
    (re.compile(r"OPERATOR\(pg_catalog\.(~|!~|=)\)"), r"\1"),
    # DuckDB's pg_catalog is on the search path, but its functions and types are not found qualified.
    (re.compile(r"\bpg_catalog\.", re.IGNORECASE), ""),
    (re.compile(r"pg_get_expr\(([^,()]+),([^,()]+),\s*true\)", re.IGNORECASE), r"pg_get_expr(\1,\2)"),
)
# PostgreSQL type oids of the column types a lake has (anything else, e.g. lists, is shown as text).
_PG_TYPES = (
    # oid, name, category, DuckDB types
    (16, "bool", "B", ("BOOLEAN",)),
    (17, "bytea", "U", ("BLOB",)),
    (20, "int8", "N", ("BIGINT", "UBIGINT", "UINTEGER", "HUGEINT")),
    (21, "int2", "N", ("SMALLINT", "TINYINT", "UTINYINT")),
    (23, "int4", "N", ("INTEGER", "USMALLINT")),
    (25, "text", "S", ()),
    (700, "float4", "N", ("FLOAT",)),
    (701, "float8", "N", ("DOUBLE",)),
    (1043, "varchar", "S", ("VARCHAR",)),
    (1082, "date", "D", ("DATE",)),
    (1083, "time", "D", ("TIME",)),
    (1114, "timestamp", "D", ("TIMESTAMP",)),
    (1184, "timestamptz", "D", ("TIMESTAMP WITH TIME ZONE",)),
    (1186, "interval", "T", ("INTERVAL",)),
    (1700, "numeric", "N", ()),
    (2950, "uuid", "U", ("UUID",)),
)


def _catalog_macros() -> list[str]:
    """Views and macros in `main` that shadow DuckDB's pg_catalog where clients need PostgreSQL's shape.

    DuckDB's pg_attribute carries DuckDB's own type ids, which its pg_type (PostgreSQL oids) lacks, so the
    JDBC driver's getColumns (Tableau, Metabase, DBeaver) joined them into no columns: here both use
    PostgreSQL oids, and format_type (psql's \\d) reads the same pg_type.
    """
    cases = " ".join(
        f"WHEN data_type IN ({', '.join(repr(name) for name in duckdb_names)}) THEN {oid}"
        for oid, _, _, duckdb_names in _PG_TYPES
        if duckdb_names
    )
    types = ", ".join(f"({oid}, '{name}', '{category}')" for oid, name, category, _ in _PG_TYPES)
    return [
        "CREATE OR REPLACE MACRO pg_get_userbyid(role_oid) AS 'medlake'",
        "CREATE OR REPLACE MACRO pg_encoding_to_char(encoding) AS 'UTF8'",
        "CREATE TYPE regtype AS VARCHAR",
        "CREATE TYPE regclass AS VARCHAR",
        "CREATE TYPE regproc AS VARCHAR",
        # DuckDB's pg_database lacks the locale columns psql's \l selects; one database: the lake.
        "CREATE OR REPLACE VIEW pg_database AS SELECT 0::BIGINT AS oid, 'medlake' AS datname, 10 AS datdba, "
        "6 AS encoding, 'c' AS datlocprovider, 'C.UTF-8' AS datcollate, 'C.UTF-8' AS datctype, "
        "NULL::VARCHAR AS daticulocale, NULL::VARCHAR[] AS datacl, false AS datistemplate, "
        "true AS datallowconn, -1 AS datconnlimit",
        f"CREATE OR REPLACE MACRO pg_type_oid(data_type) AS CASE {cases} "
        "WHEN data_type LIKE 'DECIMAL%' THEN 1700 ELSE 25 END",
        "CREATE OR REPLACE VIEW pg_type AS SELECT oid::BIGINT AS oid, typname, 0::BIGINT AS typnamespace, "
        "0 AS typowner, -1 AS typlen, false AS typbyval, 'b' AS typtype, typcategory, "
        "false AS typispreferred, true AS typisdefined, ',' AS typdelim, 0::BIGINT AS typrelid, "
        "0::BIGINT AS typelem, 0::BIGINT AS typarray, false AS typnotnull, 0::BIGINT AS typbasetype, "
        "-1 AS typtypmod, 0 AS typndims, 0::BIGINT AS typcollation, NULL AS typdefault "
        f"FROM (VALUES {types}) AS types(oid, typname, typcategory)",
        "CREATE OR REPLACE VIEW pg_attribute AS SELECT table_oid AS attrelid, column_name AS attname, "
        "pg_type_oid(data_type) AS atttypid, 0 AS attstattarget, NULL AS attlen, column_index AS attnum, "
        "0 AS attndims, -1 AS attcacheoff, CASE WHEN data_type LIKE 'DECIMAL%' "
        "THEN numeric_precision * 1000 + numeric_scale ELSE -1 END AS atttypmod, false AS attbyval, "
        "NULL AS attstorage, NULL AS attalign, NOT is_nullable AS attnotnull, "
        "column_default IS NOT NULL AS atthasdef, false AS atthasmissing, '' AS attidentity, "
        "'' AS attgenerated, false AS attisdropped, true AS attislocal, 0 AS attinhcount, "
        "0 AS attcollation, NULL AS attcompression, NULL AS attacl, NULL AS attoptions, "
        "NULL AS attfdwoptions, NULL AS attmissingval FROM duckdb_columns()",
        "CREATE OR REPLACE MACRO format_type(type_oid, typemod) AS (SELECT CASE WHEN typname = 'numeric' "
        "AND typemod > 0 THEN concat('numeric(', typemod // 1000, ',', typemod % 1000, ')') ELSE typname END "
        "FROM pg_type WHERE oid = type_oid)",
    ]


class ReadOnlySession(DuckDBSession):
    """One client's DuckDB cursor: reads run, SET of unknown settings and transactions are no-ops."""

    def __init__(self, cursor: duckdb.DuckDBPyConnection):
        super().__init__(cursor)
        rows = cursor.execute("SELECT lower(name), scope FROM duckdb_settings()").fetchall()
        self.setting_scopes: dict[str, str] = dict(rows)

    def _session_setting(self, statement: str) -> bool:
        """Whether a SET names a per-connection DuckDB setting; `ReadOnlyError` for a server-wide one."""
        match = _SET_NAME.match(statement)
        scope = self.setting_scopes.get(match.group(1).lower()) if match else None
        if scope not in (None, "LOCAL"):
            # A GLOBAL DuckDB setting (memory_limit, threads...) would change the server for every client.
            raise ReadOnlyError(f"medlake serve-sql refuses SET of the server-wide setting {match.group(1)}")
        return scope == "LOCAL"

    def rewrite_sql(self, sql: str) -> str:
        for pattern, replacement in _CATALOG_REWRITES:
            sql = pattern.sub(replacement, sql)
        return super().rewrite_sql(sql)

    def execute_sql(self, sql: str, params: Any = None) -> DuckDBQueryResult:
        sql = self.rewrite_sql(sql)
        statements = check_read_only(self._cursor, sql)
        kinds = {statement.type for statement in statements}
        if not statements:
            return DuckDBQueryResult(status="")
        if kinds == {duckdb.StatementType.TRANSACTION}:
            # Reads need no transaction; only the status the client sees changes.
            word = statements[-1].query.split()[0].upper()
            self.in_txn = word in ("BEGIN", "START")
            return DuckDBQueryResult(status="BEGIN" if self.in_txn else word)
        settings = [statement.query for statement in statements if statement.type == duckdb.StatementType.SET]
        session_settings = [query for query in settings if self._session_setting(query)]
        if kinds == {duckdb.StatementType.SET}:
            # Other parameters are PostgreSQL-only ones client tools set at connect (application_name,
            # extra_float_digits): accepted and ignored.
            for query in session_settings:
                self._cursor.execute(query)
            return DuckDBQueryResult(status="SET")
        self._cursor.execute(sql, params or None)
        if self._cursor.description:
            return LakeQueryResult(self._cursor.fetch_record_batch(), "SELECT")
        return DuckDBQueryResult(status="SELECT 0")


class LakeConnection(DuckDBConnection):
    """The shared DuckDB database; every client connection gets a `ReadOnlySession` on its own cursor."""

    def parameters(self) -> dict[str, str]:
        # integer_datetimes and standard_conforming_strings are checked by JDBC and Npgsql at connect.
        return {
            **super().parameters(),
            "integer_datetimes": "on",
            "standard_conforming_strings": "on",
            "TimeZone": "UTC",
        }

    def new_session(self) -> ReadOnlySession:
        return ReadOnlySession(self.db.cursor())


# Text-format parameters arrive as strings; typed ones become Python values so DuckDB binds them as such.
_TEXT_PARAMETER_TYPES: dict[int, Any] = {
    16: lambda text: text in ("t", "true", "1", "on"),
    20: int,
    21: int,
    23: int,
    700: float,
    701: float,
}
_UNKNOWN_OID, _TEXT_OID = 0, 25


class LakeHandler(BuenaVistaHandler):
    """buenavista's protocol handler with typed parameters, a strict password check and SQLSTATE errors."""

    server: LakeServer

    def handle_parse(self, ctx: BVContext, payload: bytes) -> None:
        super().handle_parse(ctx, payload)
        # psycopg sends strings as type 0 (unknown), which buenavista would parse as dates: they are text.
        name = payload[: payload.index(b"\x00")].decode()
        sql, oids = ctx.stmts[name]
        ctx.stmts[name] = (sql, [_TEXT_OID if oid == _UNKNOWN_OID else oid for oid in oids])

    def handle_bind(self, ctx: BVContext, payload: bytes) -> None:
        super().handle_bind(ctx, payload)
        portal = payload[: payload.index(b"\x00")].decode()
        statement, params, result_formats = ctx.portals[portal]
        oids = ctx.stmts[statement][1]
        typed = [
            _TEXT_PARAMETER_TYPES[oid](value)
            if isinstance(value, str) and oid in _TEXT_PARAMETER_TYPES
            else value
            for oid, value in zip(oids, params, strict=False)
        ]
        ctx.portals[portal] = (statement, typed, result_formats)

    def handle_md5_password(self, ctx: BVContext, payload: bytes) -> None:
        received = payload.rstrip(b"\x00")
        user = ctx.params.get("user", "")
        inner = hashlib.md5((self.server.password + self.server.user).encode()).hexdigest()
        expected = ("md5" + hashlib.md5(inner.encode() + ctx.salt).hexdigest()).encode()
        # Both compared every time, in constant time, so neither the user nor the password leaks by timing.
        user_ok = hmac.compare_digest(user.encode(), self.server.user.encode())
        if hmac.compare_digest(received, expected) and user_ok:
            self.send_authentication_ok()
            self.handle_post_auth(ctx)
            return
        log.warning("serve-sql: failed password authentication from %s", self.client_address[0])
        self.send_error(AuthenticationError(f'password authentication failed for user "{user}"'))
        # No second try on the same connection; the handler loop ends on the closed socket.
        self.request.shutdown(socket.SHUT_RDWR)

    def send_error(self, exception: BaseException | str, ctx: BVContext | None = None) -> None:
        buf = BVBuffer()
        for field, value in (
            (b"S", "ERROR"),
            (b"V", "ERROR"),
            (b"C", _sqlstate(exception) if isinstance(exception, BaseException) else "XX000"),
            (b"M", str(exception)),
        ):
            buf.write_byte(field)
            buf.write_string(value)
        buf.write_byte(b"\x00")
        out = buf.get_value()
        self.wfile.write(ServerResponse.ERROR_RESPONSE + (len(out) + 4).to_bytes(4, "big") + out)
        if ctx:
            ctx.mark_error()


class LakeServer(BuenaVistaServer):
    """A threaded PostgreSQL endpoint over one DuckDB database; each connection gets its own cursor."""

    def __init__(self, address: tuple[str, int], con: duckdb.DuckDBPyConnection, user: str, password: str):
        # No sqlglot PostgreSQL-to-DuckDB rewriter: DuckDB parses PostgreSQL syntax itself, and the rewriter
        # breaks DuckDB's own (ORDER BY ALL, FROM-first). `auth` only switches buenavista to MD5; the check
        # itself is LakeHandler.handle_md5_password.
        super().__init__(address, LakeConnection(con), auth={user: password})
        self.RequestHandlerClass = LakeHandler
        self.user = user
        self.password = password

    def verify_request(self, request: Any, client_address: Any) -> bool:
        # buenavista only admits 127.0.0.1; who may connect is decided by --host and the password here.
        return True


def _readable_roots(lake: Lake) -> list[str]:
    warehouse = lake.settings.warehouse
    if warehouse.startswith("file:"):
        warehouse = urlparse(warehouse).path
    return [warehouse.rstrip("/") + "/"]


def lock_down(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """Confine DuckDB to reading the warehouse: no other file or URL, no way to turn access back on."""
    roots = ", ".join("'" + root.replace("'", "''") + "'" for root in _readable_roots(lake))
    con.execute(f"SET allowed_directories = [{roots}]")
    con.execute("SET enable_external_access = false")


def build_server(lake: Lake, host: str, port: int, user: str, password: str) -> LakeServer:
    """A bound, not yet serving, read-only endpoint over `connect(lake)`; port 0 picks a free port."""
    if not password:
        raise ValueError("serve-sql needs a password (MEDLAKE_SQL_PASSWORD)")
    # buenavista logs queries, parameters and errors (which quote values): kept out of the logs (PHI).
    logging.getLogger("buenavista").setLevel(logging.CRITICAL)
    _extend_buenavista_types()
    con = connect(lake)
    for macro in _catalog_macros():
        con.execute(macro)
    lock_down(con, lake)
    return LakeServer((host, port), con, user, password)


def serve(lake: Lake, host: str, port: int, user: str, password: str) -> None:
    """Serve the lake over the PostgreSQL protocol until interrupted."""
    server = build_server(lake, host, port, user, password)
    with server:
        try:
            server.serve_forever()
        finally:
            server.conn.db.close()
