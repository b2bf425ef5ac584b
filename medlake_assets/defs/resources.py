"""The `lake` resource: settings resolved when definitions load, the lake opened once per process."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg

from medlake_assets.lake import Lake
from medlake_assets.lake.settings import DEFAULT_ACCESS_DIR, DEFAULT_REPORTS_DIR, Settings

CATALOG_URL_ENV = "MEDLAKE_CATALOG_URL"


def _secret_url(url: str, env_name: str) -> str:
    """`url`, or `dg.EnvVar(env_name)` when it carries a password, so that Dagster's UI and run records
    show the variable's name instead of the password."""
    if not urlparse(url).password:
        return url
    if os.environ.get(env_name) != url:
        raise ValueError(f"a catalog URL with a password must come from the secret {env_name} itself")
    return dg.EnvVar(env_name)


@functools.cache
def _open_lake(settings: Settings) -> Lake:
    return Lake(settings)


class LakeResource(dg.ConfigurableResource):
    """Where the lake lives; credentials stay in the environment (boto3, database URLs from secrets)."""

    home: str
    store_url: str
    catalog_url: str
    warehouse: str
    sources_dir: str
    s3_endpoint_url: str = ""
    archive_engine: str = "libarchive"
    reports_dir: str = ""
    access_dir: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeResource:
        return cls(
            home=str(settings.home),
            store_url=settings.store_url,
            catalog_url=_secret_url(settings.catalog_url, CATALOG_URL_ENV),
            warehouse=settings.warehouse,
            sources_dir=str(settings.sources_dir),
            s3_endpoint_url=settings.s3_endpoint_url or "",
            archive_engine=settings.archive_engine,
            reports_dir=str(settings.reports_dir),
            access_dir=str(settings.access_dir),
        )

    def settings(self) -> Settings:
        return Settings(
            home=Path(self.home),
            store_url=self.store_url,
            # An EnvVar outside a run (CLI, tests); Dagster resolves it inside one.
            catalog_url=(
                self.catalog_url.get_value() or ""
                if isinstance(self.catalog_url, dg.EnvVar)
                else self.catalog_url
            ),
            warehouse=self.warehouse,
            sources_dir=Path(self.sources_dir),
            s3_endpoint_url=self.s3_endpoint_url or None,
            archive_engine=self.archive_engine,
            # The runner refreshes the reports of this folder: it must be the one definitions were built from.
            reports_dir=Path(self.reports_dir) if self.reports_dir else DEFAULT_REPORTS_DIR,
            access_dir=Path(self.access_dir) if self.access_dir else DEFAULT_ACCESS_DIR,
        )

    def lake(self) -> Lake:
        return _open_lake(self.settings())
