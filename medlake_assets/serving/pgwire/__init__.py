"""`medlake serve-sql`: the lake over the PostgreSQL wire protocol, read-only, per-login, audited.

Layers, each its own module:
- `protocol`: pure encode/decode of protocol v3 messages, with length limits checked before reading;
- `pgtypes`: Arrow result columns and Bind parameters in PostgreSQL's text and binary formats;
- `auth`: SCRAM-SHA-256 (MD5 only if configured) and the per-address failed-login backoff;
- `statements`: the allow-list, from DuckDB's tokenizer and parse tree;
- `catalog`: a PostgreSQL-shaped catalog of what the login may read (psql, JDBC, ODBC, Npgsql);
- `database`: one locked DuckDB database per connection, tenancy filters baked in;
- `session`: per-session options, transactions, time travel, timeouts;
- `server`: sockets, TLS, startup, authentication, the simple and extended query protocols.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import duckdb
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.serving.audit import AuditLog
from medlake_assets.serving.pgwire.auth import MD5, Secret, make_secret
from medlake_assets.serving.pgwire.config import ServeSettings, load_serve_settings
from medlake_assets.serving.pgwire.database import lock
from medlake_assets.serving.pgwire.server import SqlServer
from medlake_assets.spec.access import Access, load_access

log = logging.getLogger(__name__)


class ServeError(MedlakeError, RuntimeError):
    """serve-sql cannot start as configured; the message says what to change (never a secret)."""


def login_secrets(access: Access, method: str, environ: Mapping[str, str] | None = None) -> dict[str, Secret]:
    """The password check of every login whose secret is set; logins without one cannot log in."""
    found = {}
    for user, login in access.logins.items():
        value = login.password.resolve(environ)
        if value is None:
            continue
        secret = make_secret(user, value)
        if method == MD5 and secret.md5 is None:
            raise ServeError(
                f"login {user}: MD5 needs a plain password in {login.password.env}, not a verifier"
            )
        found[user] = secret
    if not found:
        raise ServeError(
            "no serve-sql login has its password set (e.g. MEDLAKE_SQL_PASSWORD for the operator login in "
            "metadata/access/)"
        )
    return found


def check_ledger_role(url: str) -> None:
    """Refuse a ledger URL whose PostgreSQL role could write: superuser, or any write privilege on the
    ledger's tables, or CREATE on its schema."""
    engine = create_engine(make_url(url))
    try:
        with engine.connect() as connection:
            superuser = connection.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
            if superuser.scalar():
                raise ServeError("MEDLAKE_SQL_LEDGER_URL: the role is a superuser; use a read-only role")
            writable = connection.execute(
                text(
                    "SELECT count(*) FROM information_schema.tables t "
                    "WHERE t.table_schema = current_schema() "
                    "AND (has_table_privilege(current_user, quote_ident(t.table_schema) || '.' || "
                    "quote_ident(t.table_name), 'INSERT,UPDATE,DELETE,TRUNCATE') )"
                )
            ).scalar()
            creates = connection.execute(
                text("SELECT has_schema_privilege(current_schema(), 'CREATE')")
            ).scalar()
            if writable or creates:
                raise ServeError(
                    "MEDLAKE_SQL_LEDGER_URL: the role can write to the ledger's schema; grant it SELECT only"
                )
    finally:
        engine.dispose()


def lock_down(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """Lock a DuckDB connection as serve-sql locks each client's database (default limits)."""
    lock(con, lake, ServeSettings())


def build_server(
    lake: Lake,
    host: str,
    port: int,
    environ: Mapping[str, str] | None = None,
    serve: ServeSettings | None = None,
    access: Access | None = None,
) -> SqlServer:
    """A bound, not yet serving, endpoint; port 0 picks a free port."""
    env = os.environ if environ is None else environ
    serve = serve or load_serve_settings(lake.settings, env)
    access = access or load_access(lake.settings.access_dir)
    secrets = login_secrets(access, serve.auth_method, env)
    if serve.ledger_url is not None and make_url(serve.ledger_url).get_backend_name() == "postgresql":
        check_ledger_role(serve.ledger_url)
    _ = lake.ledger  # the ledger's tables exist before the audit table joins them
    audit = AuditLog(lake.settings.catalog_url)
    return SqlServer(lake, access, secrets, serve, host, port, audit)


def serve(lake: Lake, host: str, port: int) -> None:
    """Serve the lake over the PostgreSQL protocol until interrupted."""
    server = build_server(lake, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()


__all__ = [
    "ServeError",
    "ServeSettings",
    "SqlServer",
    "build_server",
    "check_ledger_role",
    "lock_down",
    "serve",
]
