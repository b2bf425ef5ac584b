"""Where medlake keeps its state, resolved from the environment in one place when definitions load.

Embedded default: everything under `MEDLAKE_HOME` (default `./.medlake`): landing and quarantine folders,
a SQLite catalog (Iceberg catalog + `meta.files` ledger) and a local warehouse. Production points the same
settings at S3 and PostgreSQL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_SOURCES_DIR = PACKAGE_ROOT.parent / "metadata" / "sources"
DEFAULT_REPORTS_DIR = PACKAGE_ROOT.parent / "metadata" / "reports"


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

    @property
    def ledger_url(self) -> str:
        return self.catalog_url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `MEDLAKE_*` environment variables, defaulting to the embedded layout."""
    env = os.environ if environ is None else environ
    home = Path(env.get("MEDLAKE_HOME", ".medlake")).expanduser().resolve()
    store_url = env.get("MEDLAKE_STORE_URL", home.as_uri())
    return Settings(
        home=home,
        store_url=store_url,
        catalog_url=env.get("MEDLAKE_CATALOG_URL", f"sqlite:///{home / 'catalog.db'}"),
        warehouse=env.get("MEDLAKE_WAREHOUSE", f"{store_url.rstrip('/')}/warehouse"),
        sources_dir=Path(env.get("MEDLAKE_SOURCES_DIR", str(DEFAULT_SOURCES_DIR))).resolve(),
        s3_endpoint_url=env.get("MEDLAKE_S3_ENDPOINT_URL") or None,
        archive_engine=env.get("MEDLAKE_ARCHIVE_ENGINE", "libarchive"),
        reports_dir=Path(env.get("MEDLAKE_REPORTS_DIR", str(DEFAULT_REPORTS_DIR))).resolve(),
    )
