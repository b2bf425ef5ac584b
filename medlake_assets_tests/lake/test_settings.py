"""Settings profiles: the embedded default, and production that refuses embedded or missing values."""

from __future__ import annotations

from pathlib import Path

import pytest

from medlake_assets.lake.settings import PRODUCTION, SettingsError, load_settings

PG_URL = "postgresql+psycopg2://medlake@db.internal:5432/lake"
S3_URL = "s3://medlake-lake/prod"
PRODUCTION_ENV = {"MEDLAKE_PROFILE": "production", "MEDLAKE_CATALOG_URL": PG_URL, "MEDLAKE_STORE_URL": S3_URL}


def test_embedded_default_keeps_everything_under_home(tmp_path: Path) -> None:
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path)})
    assert settings.profile == "embedded"
    assert settings.store_url == tmp_path.resolve().as_uri()
    assert settings.catalog_url == f"sqlite:///{tmp_path.resolve() / 'catalog.db'}"
    assert settings.warehouse == f"{tmp_path.resolve().as_uri()}/warehouse"
    assert settings.sensor_interval_seconds == 30


def test_production_profile_uses_postgresql_and_s3(tmp_path: Path) -> None:
    settings = load_settings({**PRODUCTION_ENV, "MEDLAKE_HOME": str(tmp_path)})
    assert settings.profile == PRODUCTION
    assert settings.catalog_url == PG_URL
    assert settings.ledger_url == PG_URL
    assert settings.store_url == S3_URL
    assert settings.warehouse == f"{S3_URL}/warehouse"


def test_profile_name_is_case_insensitive() -> None:
    assert load_settings({**PRODUCTION_ENV, "MEDLAKE_PROFILE": " Production "}).profile == PRODUCTION


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"MEDLAKE_CATALOG_URL": ""}, "MEDLAKE_CATALOG_URL is not set"),
        (
            {"MEDLAKE_CATALOG_URL": "sqlite:///catalog.db"},
            "MEDLAKE_CATALOG_URL must be a PostgreSQL URL, not sqlite",
        ),
        ({"MEDLAKE_STORE_URL": ""}, "MEDLAKE_STORE_URL is not set"),
        ({"MEDLAKE_STORE_URL": "file:///srv/lake"}, "MEDLAKE_STORE_URL must be an s3:// URL, not file"),
        ({"MEDLAKE_STORE_URL": "/srv/lake"}, "MEDLAKE_STORE_URL must be an s3:// URL, not a path"),
        ({"MEDLAKE_WAREHOUSE": "file:///srv/warehouse"}, "MEDLAKE_WAREHOUSE must be an s3:// URL"),
    ],
    ids=["no-catalog", "sqlite-catalog", "no-store", "file-store", "path-store", "file-warehouse"],
)
def test_production_refuses_embedded_or_missing_values(overrides: dict[str, str], message: str) -> None:
    env = {key: value for key, value in {**PRODUCTION_ENV, **overrides}.items() if value}
    with pytest.raises(SettingsError, match=f"MEDLAKE_PROFILE=production: .*{message}"):
        load_settings(env)


def test_production_names_every_missing_variable_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"MEDLAKE_PROFILE": "production"})
    assert "MEDLAKE_CATALOG_URL is not set" in str(error.value)
    assert "MEDLAKE_STORE_URL is not set" in str(error.value)


def test_production_error_never_shows_the_catalog_password() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({**PRODUCTION_ENV, "MEDLAKE_CATALOG_URL": "mysql://lake:s3cr3t-pw@db/lake"})
    assert "s3cr3t-pw" not in str(error.value)
    assert "not mysql://" in str(error.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MEDLAKE_PROFILE": "staging"},
            "MEDLAKE_PROFILE must be one of embedded, production, not 'staging'",
        ),
        (
            {"MEDLAKE_SENSOR_INTERVAL_SECONDS": "0"},
            "MEDLAKE_SENSOR_INTERVAL_SECONDS must be a positive integer",
        ),
        (
            {"MEDLAKE_SENSOR_INTERVAL_SECONDS": "fast"},
            "MEDLAKE_SENSOR_INTERVAL_SECONDS must be a positive integer",
        ),
    ],
    ids=["unknown-profile", "zero-interval", "text-interval"],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_sensor_interval_reaches_the_sensors() -> None:
    from medlake_assets.definitions import build_definitions

    settings = load_settings({"MEDLAKE_SENSOR_INTERVAL_SECONDS": "2"})
    repository = build_definitions(settings).get_repository_def()
    intervals = {sensor.name: sensor.minimum_interval_seconds for sensor in repository.sensor_defs}
    assert intervals["landing"] == 2
    assert intervals["silver_automation"] == 2
    assert intervals["gold_automation"] == 60  # a report run rebuilds the whole report


def test_definitions_read_settings_when_they_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the entry point reads no settings; an invalid production environment fails at load."""
    import medlake_assets.definitions as definitions

    monkeypatch.setenv("MEDLAKE_PROFILE", "production")
    monkeypatch.delenv("MEDLAKE_CATALOG_URL", raising=False)
    with pytest.raises(SettingsError, match="MEDLAKE_CATALOG_URL is not set"):
        definitions.defs()


def test_the_lake_resource_carries_every_folder_into_runs(tmp_path) -> None:
    from medlake_assets.defs.resources import LakeResource

    env = {
        "MEDLAKE_HOME": str(tmp_path),
        "MEDLAKE_ACCESS_DIR": str(tmp_path / "access"),
        "MEDLAKE_REPORTS_DIR": str(tmp_path / "reports"),
    }
    settings = load_settings(env)
    carried = LakeResource.from_settings(settings).settings()
    assert carried.access_dir == tmp_path / "access"
    assert carried.reports_dir == tmp_path / "reports"
    assert carried.sources_dir == settings.sources_dir
