"""The production instance template (deploy/dagster.production.yaml) loads on a real PostgreSQL.

Each test gets a fresh database on the server `MEDLAKE_TEST_POSTGRES_URL` names (CI starts one with
scripts/start_postgres.sh) and a placeholder kubeconfig: the run launcher loads its Kubernetes client
configuration without reaching a cluster, which is as far as this machine can go.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_aws.s3 import S3ComputeLogManager
from dagster_k8s import DagsterK8sJobConfig, K8sRunLauncher, construct_dagster_k8s_job
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from sqlalchemy.engine import URL, make_url

from medlake_assets.definitions import build_definitions
from medlake_assets.lake.settings import load_settings
from medlake_assets_tests.postgres import postgres_url
from medlake_dev.workers import scratch_database

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "deploy" / "dagster.production.yaml"
KUBERNETES_VERSION = "1.31.0"
RUN_IMAGE = "registry.example.com/medlake/medlake:0123456789ab"
PLACEHOLDER_KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "placeholder", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "placeholder", "user": {"token": "placeholder"}}],
    "contexts": [
        {"name": "placeholder", "context": {"cluster": "placeholder", "user": "placeholder"}},
    ],
    "current-context": "placeholder",
}


@pytest.fixture
def dagster_database() -> Iterator[URL]:
    """A fresh database for Dagster's storage, dropped afterwards (other tests share the server)."""
    with scratch_database(postgres_url(), "medlake_dagster") as url:
        yield make_url(url)


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    """$DAGSTER_HOME holding the template, pointed at a placeholder kubeconfig instead of in-cluster."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(PLACEHOLDER_KUBECONFIG))
    config = yaml.safe_load(TEMPLATE.read_text())
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture
def instance_env(dagster_database: URL) -> dict[str, str]:
    """The variables the template reads; the password is random (the test server trusts loopback)."""
    return {
        "DAGSTER_PG_HOST": dagster_database.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(dagster_database.port or 5432),
        "DAGSTER_PG_USER": dagster_database.username or "postgres",
        "DAGSTER_PG_PASSWORD": dagster_database.password or secrets.token_urlsafe(16),
        "DAGSTER_PG_DB": dagster_database.database or "",
        "MEDLAKE_IMAGE": RUN_IMAGE,
    }


@pytest.mark.e2e  # a fresh `dagster` process creating its tables: ~20 s on 2 cores
def test_dagster_instance_info_loads_the_template(dagster_home: Path, instance_env: dict[str, str]) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "instance", "info"],
        env={**os.environ, **instance_env, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    configuration, _, schema_text = result.stdout.partition("Storage schema state:")
    for storage in ("PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"):
        assert storage in configuration
    assert "class: K8sRunLauncher" in configuration
    # The CLI loads the run coordinator lazily (it prints NoneType): the in-process test checks its class.
    # Dagster created its tables in the empty database and they are at the latest revision.
    schema = yaml.safe_load(schema_text.strip("-\n"))["schema"]
    for storage in ("event_log_storage", "run_storage", "schedule_storage"):
        assert schema[storage]["current"] == schema[storage]["latest"], storage
    # Nothing printed carries the password.
    assert instance_env["DAGSTER_PG_PASSWORD"] not in result.stdout + result.stderr


@pytest.fixture
def instance(
    dagster_home: Path, instance_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    for name, value in instance_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.from_config(str(dagster_home)) as loaded:
        yield loaded


def test_instance_queues_runs_and_launches_them_as_kubernetes_jobs(instance: dg.DagsterInstance) -> None:
    assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
    launcher = instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.job_image == RUN_IMAGE
    assert launcher.job_namespace == "medlake"
    assert set(launcher.env_secrets) == {"medlake-catalog", "medlake-aws", "medlake-archive-passwords"}
    assert isinstance(instance.compute_log_manager, S3ComputeLogManager)

    queue = instance.get_concurrency_config()
    assert queue.run_queue_config is not None
    assert queue.run_queue_config.max_concurrent_runs == 16
    assert [(limit["key"], limit["limit"]) for limit in queue.run_queue_config.tag_concurrency_limits] == [
        ("medlake/source", 2)
    ]
    assert queue.pool_config.default_pool_limit == 1
    assert queue.pool_config.pool_granularity is not None
    assert queue.pool_config.pool_granularity.value == "run"

    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_monitoring_max_runtime_seconds == 7200
    assert instance.run_retries_enabled
    assert instance.run_retries_max_retries == 2
    assert not instance.run_retries_retry_on_asset_or_op_failure


def test_every_iceberg_pool_of_the_definitions_gets_one_slot(
    instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    """The pools the assets declare (`iceberg_<layer>_<table>`) each admit exactly one writer."""
    defs = build_definitions(load_settings({"MEDLAKE_HOME": str(tmp_path / "lake")}))
    pools = {
        assets_def.op.pool
        for assets_def in defs.resolve_asset_graph().assets_defs
        if assets_def.is_executable and assets_def.op.pool
    }
    assert {"iceberg_bronze_lab_results", "iceberg_silver_encounters"} <= pools
    assert all(pool.startswith("iceberg_") for pool in pools)
    storage = instance.event_log_storage
    for pool in sorted(pools):
        storage.initialize_concurrency_limit_to_default(pool)
        assert storage.get_concurrency_info(pool).slot_count == 1, pool


def test_the_run_pod_the_launcher_builds_is_a_valid_kubernetes_job(instance: dg.DagsterInstance) -> None:
    """The Job for one run, from the template's launcher settings, passes the strict Kubernetes schema."""
    launcher = instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher) and launcher.inst_data is not None
    launcher_config = launcher.inst_data.config_dict
    job = construct_dagster_k8s_job(
        job_config=DagsterK8sJobConfig(
            job_image=launcher.job_image,
            dagster_home=launcher.dagster_home,
            image_pull_policy=launcher.image_pull_policy,
            service_account_name=launcher.service_account_name,
            instance_config_map=launcher.instance_config_map,
            postgres_password_secret=launcher.postgres_password_secret,
            env_secrets=launcher.env_secrets,
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(launcher_config["run_k8s_config"]),
        component="run_worker",
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)

    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == RUN_IMAGE
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "6Gi"},
        "limits": {"cpu": "2", "memory": "8Gi"},
    }
    env = {variable["name"]: variable for variable in container["env"]}
    assert env["MEDLAKE_PROFILE"]["value"] == "production"
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dagster-postgresql-secret",
        "key": "postgresql-password",
    }
    assert [source["secretRef"]["name"] for source in container["envFrom"]] == list(launcher.env_secrets)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
