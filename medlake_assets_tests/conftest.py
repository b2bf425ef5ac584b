"""Shared fixtures: a synthetic archive password from the environment, and a loaded source catalog."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from medlake_assets.spec import SourceSpec, load_sources
from medlake_assets_tests.s3_endpoint import s3_bucket, s3_endpoint

__all__ = ["s3_bucket", "s3_endpoint"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES_DIR = REPO_ROOT / "metadata" / "sources"


@pytest.fixture
def archive_password(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh random password, set as the secret ingestion and the generator both read."""
    password = secrets.token_urlsafe(12)
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD", password)
    return password


@pytest.fixture(scope="session")
def sources() -> dict[str, SourceSpec]:
    return load_sources(SOURCES_DIR)
