"""Where medlake keeps its state, resolved from the environment in one place when definitions load.

Two profiles, chosen by `MEDLAKE_PROFILE`:
- `embedded` (default): everything under `MEDLAKE_HOME` (default `./.medlake`): landing and quarantine
  folders, a SQLite catalog (Iceberg catalog + `meta.files` ledger) and a local warehouse.
- `production`: the Iceberg catalog and the ledger on PostgreSQL (`MEDLAKE_CATALOG_URL`), landing,
  warehouse and quarantine on S3 (`MEDLAKE_STORE_URL=s3://...`). Nothing falls back to the embedded
  defaults: a missing or embedded value fails when the settings load, naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medlake_assets.errors import MedlakeError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCES_DIR = PACKAGE_ROOT.parent / "metadata" / "sources"
DEFAULT_REPORTS_DIR = PACKAGE_ROOT.parent / "metadata" / "reports"
DEFAULT_ACCESS_DIR = PACKAGE_ROOT.parent / "metadata" / "access"
EMBEDDED, PRODUCTION = "embedded", "production"
PROFILES = (EMBEDDED, PRODUCTION)
DEFAULT_SENSOR_INTERVAL_SECONDS = 30
# SQLAlchemy URL schemes of a PostgreSQL catalog (`postgresql://`, `postgresql+psycopg2://`, ...).
POSTGRES_SCHEMES = ("postgresql", "postgres")


class SettingsError(MedlakeError, ValueError):
    """The environment does not describe a usable deployment; the message names the variables."""


@dataclass(frozen=True)
class Settings:
    home: Path
    store_url: str
    catalog_url: str
    warehouse: str
    sources_dir: Path
    s3_endpoint_url: str | None = None
    archive_engine: str = "libarchive"
    reports_dir: Path = DEFAULT_REPORTS_DIR
    access_dir: Path = DEFAULT_ACCESS_DIR
    """Customers, facilities and SQL logins (`metadata/access/*.yaml`)."""
    profile: str = EMBEDDED
    sensor_interval_seconds: int = DEFAULT_SENSOR_INTERVAL_SECONDS
    """Minimum seconds between evaluations of the landing and automation sensors."""
    runs_in_flight: int = 1
    """`ingest_landed` runs the landing sensor keeps queued or running at once (the run workers)."""

    @property
    def ledger_url(self) -> str:
        return self.catalog_url


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""


def check_production(settings: Settings, env: Mapping[str, str]) -> None:
    """Fail fast unless the catalog is on PostgreSQL and the store and warehouse are on S3."""
    problems = []
    if not env.get("MEDLAKE_CATALOG_URL"):
        problems.append("MEDLAKE_CATALOG_URL is not set (expected postgresql://...)")
    elif _scheme(settings.catalog_url) not in POSTGRES_SCHEMES:
        problems.append(
            f"MEDLAKE_CATALOG_URL must be a PostgreSQL URL, not {_scheme(settings.catalog_url)}://"
        )
    if not env.get("MEDLAKE_STORE_URL"):
        problems.append("MEDLAKE_STORE_URL is not set (expected s3://bucket/prefix)")
    elif _scheme(settings.store_url) != "s3":
        problems.append(
            f"MEDLAKE_STORE_URL must be an s3:// URL, not {_scheme(settings.store_url) or 'a path'}"
        )
    # The warehouse defaults to the store's `warehouse/`: only worth a word when set, or the store is fine.
    if _scheme(settings.warehouse) != "s3" and (env.get("MEDLAKE_WAREHOUSE") or not problems):
        problems.append("MEDLAKE_WAREHOUSE must be an s3:// URL")
    if problems:
        # Scheme names only: a URL may carry a password.
        raise SettingsError(f"MEDLAKE_PROFILE=production: {'; '.join(problems)}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `MEDLAKE_*` environment variables, for the profile `MEDLAKE_PROFILE` names."""
    env = os.environ if environ is None else environ
    profile = env.get("MEDLAKE_PROFILE", EMBEDDED).strip().lower() or EMBEDDED
    if profile not in PROFILES:
        raise SettingsError(f"MEDLAKE_PROFILE must be one of {', '.join(PROFILES)}, not {profile!r}")
    interval = env.get("MEDLAKE_SENSOR_INTERVAL_SECONDS", str(DEFAULT_SENSOR_INTERVAL_SECONDS))
    if not interval.isdigit() or int(interval) < 1:
        raise SettingsError(f"MEDLAKE_SENSOR_INTERVAL_SECONDS must be a positive integer, not {interval!r}")
    runs = env.get("MEDLAKE_RUNS_IN_FLIGHT", "1")
    if not runs.isdigit() or int(runs) < 1:
        raise SettingsError(f"MEDLAKE_RUNS_IN_FLIGHT must be a positive integer, not {runs!r}")
    home = Path(env.get("MEDLAKE_HOME", ".medlake")).expanduser().resolve()
    store_url = env.get("MEDLAKE_STORE_URL", home.as_uri())
    settings = Settings(
        home=home,
        store_url=store_url,
        catalog_url=env.get("MEDLAKE_CATALOG_URL", f"sqlite:///{home / 'catalog.db'}"),
        warehouse=env.get("MEDLAKE_WAREHOUSE", f"{store_url.rstrip('/')}/warehouse"),
        sources_dir=Path(env.get("MEDLAKE_SOURCES_DIR", str(DEFAULT_SOURCES_DIR))).resolve(),
        s3_endpoint_url=env.get("MEDLAKE_S3_ENDPOINT_URL") or None,
        archive_engine=env.get("MEDLAKE_ARCHIVE_ENGINE", "libarchive"),
        reports_dir=Path(env.get("MEDLAKE_REPORTS_DIR", str(DEFAULT_REPORTS_DIR))).resolve(),
        access_dir=Path(env.get("MEDLAKE_ACCESS_DIR", str(DEFAULT_ACCESS_DIR))).resolve(),
        profile=profile,
        sensor_interval_seconds=int(interval),
        runs_in_flight=int(runs),
    )
    if profile == PRODUCTION:
        check_production(settings, env)
    return settings
