"""The `lake` resource: settings resolved when definitions load, the lake opened once per process."""

from __future__ import annotations

import functools
from pathlib import Path

import dagster as dg

from medlake_assets.config import Settings
from medlake_assets.lake import Lake


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

    @classmethod
    def from_settings(cls, settings: Settings) -> LakeResource:
        return cls(
            home=str(settings.home),
            store_url=settings.store_url,
            catalog_url=settings.catalog_url,
            warehouse=settings.warehouse,
            sources_dir=str(settings.sources_dir),
            s3_endpoint_url=settings.s3_endpoint_url or "",
            archive_engine=settings.archive_engine,
        )

    def settings(self) -> Settings:
        return Settings(
            home=Path(self.home),
            store_url=self.store_url,
            catalog_url=self.catalog_url,
            warehouse=self.warehouse,
            sources_dir=Path(self.sources_dir),
            s3_endpoint_url=self.s3_endpoint_url or None,
            archive_engine=self.archive_engine,
        )

    def lake(self) -> Lake:
        return _open_lake(self.settings())
