"""The kernel under every layer: settings, `Lake`, object store, catalog, commits, the ledger, the columns
and partition specs every table shares, staged data files, maintenance."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from medlake_assets.lake.settings import Settings

# The kernel's package holds the settings, which every command imports first: what the handle opens
# (pyiceberg, SQLAlchemy, pydantic) is imported when it is opened, not when the package is.
if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog

    from medlake_assets.lake.ledger import Ledger
    from medlake_assets.lake.objectstore import ObjectStore
    from medlake_assets.spec import SourceSpec


class Lake:
    """Opened lazily, so building definitions never touches storage."""

    def __init__(self, settings: Settings, sources: dict[str, SourceSpec] | None = None):
        self.settings = settings
        self._sources = sources

    @cached_property
    def sources(self) -> dict[str, SourceSpec]:
        from medlake_assets.spec import load_sources

        return self._sources if self._sources is not None else load_sources(self.settings.sources_dir)

    @cached_property
    def store(self) -> ObjectStore:
        from medlake_assets.lake.objectstore import open_store

        # The settings' endpoint, like the catalog's: a lake opened from settings never mixes two endpoints.
        return open_store(self.settings.store_url, endpoint_url=self.settings.s3_endpoint_url)

    @cached_property
    def catalog(self) -> Catalog:
        from medlake_assets.lake.catalog import open_catalog

        return open_catalog(self.settings)

    @cached_property
    def ledger(self) -> Ledger:
        from medlake_assets.lake.ledger import Ledger

        if self.settings.ledger_url.startswith("sqlite:///"):
            self.settings.home.mkdir(parents=True, exist_ok=True)
        return Ledger(self.settings.ledger_url)
