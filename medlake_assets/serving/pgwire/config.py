"""Settings of `medlake serve-sql`, from `MEDLAKE_SQL_*` environment variables (README lists them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medlake_assets.lake.settings import POSTGRES_SCHEMES, Settings, SettingsError
from medlake_assets.serving.pgwire.auth import METHODS, SCRAM

# Before a login is authenticated a client may send only small messages: a startup packet (capped at
# PostgreSQL's own 10,000 bytes) and password or SCRAM messages.
MAX_UNAUTHENTICATED_BYTES = 8192


@dataclass(frozen=True)
class ServeSettings:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_required: bool = True
    """With a certificate configured, refuse clients that do not ask for TLS."""
    auth_method: str = SCRAM
    ledger_url: str | None = None
    """The ledger as DuckDB attaches it: a PostgreSQL role that cannot write (required with a PostgreSQL
    catalog); None means the catalog's SQLite file, attached read-only."""
    statement_timeout_seconds: float = 300.0
    memory_limit: str = "2GB"
    threads: int = 2
    max_connections: int = 32
    max_message_bytes: int = 16 * 1024 * 1024
    auth_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 3600.0
    backoff_free_attempts: int = 5
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {text!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


def load_serve_settings(settings: Settings, environ: Mapping[str, str] | None = None) -> ServeSettings:
    env = os.environ if environ is None else environ
    cert, key = env.get("MEDLAKE_SQL_TLS_CERT") or None, env.get("MEDLAKE_SQL_TLS_KEY") or None
    if bool(cert) != bool(key):
        raise SettingsError("MEDLAKE_SQL_TLS_CERT and MEDLAKE_SQL_TLS_KEY are set together or not at all")
    for name, path in (("MEDLAKE_SQL_TLS_CERT", cert), ("MEDLAKE_SQL_TLS_KEY", key)):
        if path and not Path(path).is_file():
            raise SettingsError(f"{name} names no file")
    method = (env.get("MEDLAKE_SQL_AUTH") or SCRAM).lower()
    if method not in METHODS:
        raise SettingsError(f"MEDLAKE_SQL_AUTH must be one of {', '.join(METHODS)}, not {method!r}")
    ledger_url = env.get("MEDLAKE_SQL_LEDGER_URL") or None
    catalog_scheme = settings.catalog_url.split(":", 1)[0].split("+", 1)[0].lower()
    if ledger_url is None and catalog_scheme in POSTGRES_SCHEMES:
        raise SettingsError(
            "MEDLAKE_SQL_LEDGER_URL is not set: with a PostgreSQL catalog, serve-sql attaches the ledger "
            "through a role that cannot write (see docs/serving.md)"
        )
    return ServeSettings(
        tls_cert=Path(cert) if cert else None,
        tls_key=Path(key) if key else None,
        tls_required=(env.get("MEDLAKE_SQL_TLS_REQUIRED", "true").lower() not in ("0", "false", "no")),
        auth_method=method,
        ledger_url=ledger_url,
        statement_timeout_seconds=_number(env, "MEDLAKE_SQL_STATEMENT_TIMEOUT_SECONDS", 300.0, 0.1),
        memory_limit=env.get("MEDLAKE_SQL_MEMORY_LIMIT") or "2GB",
        threads=int(_number(env, "MEDLAKE_SQL_THREADS", 2, 1)),
        max_connections=int(_number(env, "MEDLAKE_SQL_MAX_CONNECTIONS", 32, 1)),
        max_message_bytes=int(_number(env, "MEDLAKE_SQL_MAX_MESSAGE_BYTES", 16 * 1024 * 1024, 1024)),
        auth_timeout_seconds=_number(env, "MEDLAKE_SQL_AUTH_TIMEOUT_SECONDS", 30.0, 1),
        idle_timeout_seconds=_number(env, "MEDLAKE_SQL_IDLE_TIMEOUT_SECONDS", 3600.0, 1),
        backoff_free_attempts=int(_number(env, "MEDLAKE_SQL_LOGIN_FREE_ATTEMPTS", 5, 0)),
        backoff_base_seconds=_number(env, "MEDLAKE_SQL_LOGIN_BACKOFF_SECONDS", 1.0, 0.01),
        backoff_max_seconds=_number(env, "MEDLAKE_SQL_LOGIN_BACKOFF_MAX_SECONDS", 300.0, 0.01),
    )
