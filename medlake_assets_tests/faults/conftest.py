"""Fixtures of the fault tests: one generated feed, PostgreSQL databases, S3 buckets and a clean run.

Production shape: the Iceberg catalog and the ledger on PostgreSQL (`MEDLAKE_TEST_POSTGRES_URL`'s server
when set, as in CI, else a private cluster started for the session), landing/quarantine/warehouse on the
loopback S3 endpoint. Every lake gets its own database and bucket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import Settings, load_settings
from medlake_assets_tests.conftest import SOURCES_DIR
from medlake_assets_tests.defs.test_ingest import assert_lake_matches_manifest
from medlake_assets_tests.faults.harness import Feeds, ingest_env, lake_contents
from medlake_assets_tests.faults.servers import PrivatePostgres, create_database, postgres_bin
from medlake_assets_tests.lake_helpers import open_lake
from medlake_assets_tests.postgres import POSTGRES_ENV
from medlake_assets_tests.s3_endpoint import s3_client
from medlake_dev.generate import generate_feeds

# Small enough for a test to run in well under a minute, big enough for several batches per source
# (3 archives a run) and every kind of bad input that the generator plants at this rate.
GENERATION = {"facilities": 3, "archives": 20, "seed": 23, "bad_rate": 0.3, "size_scale": 0.02}
MAX_ARCHIVES_PER_RUN = 3


@pytest.fixture(scope="session")
def fault_feeds(tmp_path_factory: pytest.TempPathFactory) -> Feeds:
    """The feeds every fault test lands, dated today (UTC) so the sensors' own open-day window lists them."""
    sources_dir = tmp_path_factory.mktemp("fault-sources")
    shutil.copytree(SOURCES_DIR, sources_dir, dirs_exist_ok=True)
    defaults = sources_dir / "_defaults.yaml"
    text = defaults.read_text()
    assert "max_archives_per_run: 500" in text
    defaults.write_text(
        text.replace("max_archives_per_run: 500", f"max_archives_per_run: {MAX_ARCHIVES_PER_RUN}")
    )
    password = secrets.token_urlsafe(12)
    objects: dict[str, bytes] = {}
    manifest = generate_feeds(
        objects.__setitem__,
        day=datetime.now(UTC).date(),
        environ={"MEDLAKE_ARCHIVE_PASSWORD": password},
        sources_dir=sources_dir,
        **GENERATION,
    )
    return Feeds(objects=objects, manifest=manifest, sources_dir=sources_dir, password=password)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A URL on the PostgreSQL server the fault tests create their databases on."""
    if shared := os.environ.get(POSTGRES_ENV):
        yield shared
        return
    assert postgres_bin() is not None, f"no PostgreSQL: set {POSTGRES_ENV} or install the server"
    server = PrivatePostgres()
    try:
        yield server.url
    finally:
        server.close()


def new_database(server_url: str) -> str:
    return create_database(server_url, f"medlake_fault_{uuid.uuid4().hex[:12]}")


def new_bucket(endpoint: str) -> str:
    name = f"medlake-fault-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class FaultLake:
    """One lake under test: the environment of its `medlake ingest --once` and the lake opened here."""

    home: Path
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.home / "ingest.log"

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    @property
    def ledger_url(self) -> str:
        return self.settings.ledger_url

    def lake(self) -> Lake:
        return open_lake(self.settings)


@pytest.fixture
def make_lake(
    tmp_path: Path, fault_feeds: Feeds, postgres_server: str, s3_endpoint: str
) -> Callable[..., FaultLake]:
    """A new production-shaped lake: its own database (on `catalog_server`) and bucket (on `endpoint`)."""

    def make(
        name: str, *, catalog_server: str = postgres_server, endpoint: str = s3_endpoint, store_url: str = ""
    ) -> FaultLake:
        home = tmp_path / name
        home.mkdir()
        env = ingest_env(
            home,
            fault_feeds,
            catalog_url=new_database(catalog_server),
            store_url=store_url or f"s3://{new_bucket(endpoint)}/medlake",
            s3_endpoint=endpoint,
        )
        return FaultLake(home, env)

    return make


@pytest.fixture(scope="session")
def clean_run(
    tmp_path_factory: pytest.TempPathFactory, fault_feeds: Feeds, postgres_server: str, s3_endpoint: str
) -> dict[str, Counter]:
    """The contents of a lake that ingested the same feeds with no fault (in process, same code)."""
    home = tmp_path_factory.mktemp("clean")
    env = ingest_env(
        home,
        fault_feeds,
        catalog_url=new_database(postgres_server),
        store_url=f"s3://{new_bucket(s3_endpoint)}/medlake",
        s3_endpoint=s3_endpoint,
    )
    settings = load_settings(env)
    lake = open_lake(settings)
    fault_feeds.land(lake.store)
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        for name in ("MEDLAKE_ARCHIVE_PASSWORD", "MEDLAKE_INGEST_WORKERS"):
            patch.setenv(name, env[name])
        summary = ingest_once(build_definitions(settings), instance, lake)
    assert summary.failed_runs == 0
    assert_lake_matches_manifest(lake, fault_feeds.manifest)
    return lake_contents(lake)
