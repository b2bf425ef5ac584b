"""The test PostgreSQL server: its URL comes from `MEDLAKE_TEST_POSTGRES_URL` (scripts/start_postgres.sh; CI
sets it), and tests work in schemas or databases of their own that they drop afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "MEDLAKE_TEST_POSTGRES_URL"


def postgres_url() -> str:
    """The test server's URL; without one the test fails (never skips): `make test` starts the server."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"{POSTGRES_ENV} is not set (make test starts the server: scripts/start_postgres.sh)")
    return url


@contextmanager
def scratch_schema(prefix: str) -> Iterator[str]:
    """A URL whose connections work in a new schema (first on libpq's search path), dropped afterwards."""
    base = make_url(postgres_url())
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
