"""The Iceberg catalog (pyiceberg SqlCatalog on SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import os

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.exc import IntegrityError

from medlake_assets.config import Settings

NAMESPACES = ("bronze", "silver", "quarantine", "gold")


def catalog_properties(settings: Settings) -> dict[str, str]:
    # pool_pre_ping: after a database restart, a pooled connection is tested and replaced before use
    # instead of failing the next commit (pyiceberg's default is off; the ledger's engine does the same).
    properties = {"uri": settings.catalog_url, "warehouse": settings.warehouse, "pool_pre_ping": "true"}
    if settings.warehouse.startswith("s3://"):
        if settings.s3_endpoint_url:
            properties["s3.endpoint"] = settings.s3_endpoint_url
            properties["s3.force-virtual-addressing"] = "false"
        for env_name, key in [
            ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
            ("AWS_DEFAULT_REGION", "s3.region"),
        ]:
            if os.environ.get(env_name):
                properties[key] = os.environ[env_name]
    return properties


def open_catalog(settings: Settings) -> Catalog:
    """Open the catalog and make sure the medlake namespaces exist."""
    if settings.catalog_url.startswith("sqlite:///"):
        settings.home.mkdir(parents=True, exist_ok=True)
    catalog = SqlCatalog("medlake", **catalog_properties(settings))
    for namespace in NAMESPACES:
        # IntegrityError: a concurrent process created it between pyiceberg's check and its insert.
        with contextlib.suppress(IntegrityError):
            catalog.create_namespace_if_not_exists(namespace)
    return catalog
