"""A catalog URL with a password reaches neither Dagster (config, run records, event logs) nor DuckDB's
SQL-visible catalog: Dagster gets `EnvVar("MEDLAKE_CATALOG_URL")`, DuckDB a redacted secret."""

from __future__ import annotations

import secrets
import uuid

import dagster as dg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.resources import CATALOG_URL_ENV, LakeResource
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import load_settings
from medlake_assets.serving.sql import connect
from medlake_assets_tests.faults.servers import create_database
from medlake_assets_tests.postgres import postgres_url


@pytest.fixture
def catalog_password() -> str:
    return "pw-" + secrets.token_urlsafe(12)


def test_dagster_sees_the_variable_name_never_the_password(tmp_path, monkeypatch, catalog_password):
    url = f"postgresql+psycopg2://medlake:{catalog_password}@127.0.0.1:1/lake"
    monkeypatch.setenv(CATALOG_URL_ENV, url)
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path), CATALOG_URL_ENV: url})
    resource = LakeResource.from_settings(settings)
    assert isinstance(resource.catalog_url, dg.EnvVar)
    assert resource.catalog_url.env_var_name == CATALOG_URL_ENV
    assert catalog_password not in repr(resource)
    assert resource.settings().catalog_url == url  # outside a run (CLI, tests) it resolves too
    assert build_definitions(settings).resources["lake"].catalog_url.env_var_name == CATALOG_URL_ENV

    @dg.asset
    def uses_the_lake(lake: LakeResource) -> dg.MaterializeResult:
        # Inside a run Dagster resolves the variable; the asset reports only whether it got the URL.
        return dg.MaterializeResult(metadata={"resolved": lake.settings().catalog_url == url})

    with dg.instance_for_test() as instance:
        result = dg.materialize([uses_the_lake], resources={"lake": resource}, instance=instance)
        assert result.success
        [materialization] = result.asset_materializations_for_node("uses_the_lake")
        assert materialization.metadata["resolved"].value is True
        run = instance.get_run_by_id(result.run_id)
        records = [dg.serialize_value(record) for record in instance.all_logs(result.run_id)]
        assert len(records) > 5
        assert not any(catalog_password in record for record in [dg.serialize_value(run), *records])


def test_a_password_url_that_is_not_the_environment_variable_is_refused(tmp_path, catalog_password):
    url = f"postgresql+psycopg2://medlake:{catalog_password}@127.0.0.1:1/lake"
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path), CATALOG_URL_ENV: url})
    with pytest.raises(ValueError, match=f"must come from the secret {CATALOG_URL_ENV}") as error:
        LakeResource.from_settings(settings)
    assert catalog_password not in str(error.value)


def test_urls_without_a_password_stay_plain_config(tmp_path):
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path)})
    assert LakeResource.from_settings(settings).catalog_url == settings.catalog_url


def test_duckdb_attaches_the_ledger_without_showing_the_password(tmp_path, monkeypatch, catalog_password):
    """serve-sql users can query duckdb_databases(): an ATTACH DSN would show them the password."""
    name = f"medlake_secret_{uuid.uuid4().hex[:12]}"
    # The test server trusts loopback, so any password works; what matters is where it shows up.
    url = make_url(create_database(postgres_url(), name)).set(password=catalog_password)
    url_text = url.render_as_string(hide_password=False)
    try:
        monkeypatch.delenv("MEDLAKE_DEID_KEY", raising=False)
        lake = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path), CATALOG_URL_ENV: url_text}))
        con = connect(lake)
        assert con.sql("SELECT count(*) FROM meta.files").fetchone() == (0,)
        visible = con.sql(
            "SELECT CAST(list(path) AS VARCHAR) FROM duckdb_databases() "
            "UNION ALL SELECT CAST(list(secret_string) AS VARCHAR) FROM duckdb_secrets()"
        ).fetchall()
        assert "password=redacted" in str(visible)
        assert catalog_password not in str(visible)
        con.close()
        lake.catalog.engine.dispose()
        lake.ledger.engine.dispose()
    finally:
        admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
