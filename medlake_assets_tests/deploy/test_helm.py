"""Helm values, our own manifests and the production instance template, checked offline.

No cluster and no `helm` binary here: the values are parsed and checked for what matters, the Kubernetes
objects they describe are validated against the Kubernetes schema (kubernetes-validate, strict), and the
policy is compared with deploy/dagster.production.yaml, which test_instance.py loads into Dagster.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity

from medlake_assets.lake.settings import PRODUCTION, load_settings
from medlake_assets.spec import load_sources

REPO_ROOT = Path(__file__).resolve().parents[2]
VALUES = REPO_ROOT / "helm" / "medlake" / "values.yaml"
MANIFESTS = REPO_ROOT / "helm" / "manifests"
INSTALL_SCRIPT = REPO_ROOT / "helm" / "install.sh"
TEMPLATE = REPO_ROOT / "deploy" / "dagster.production.yaml"
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
KUBERNETES_VERSION = "1.31.0"
# Docker's rule for a tag.
DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.safe_load(TEMPLATE.read_text())


@pytest.fixture(scope="module")
def deployment(values: dict[str, Any]) -> dict[str, Any]:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] and len(deployments) == 1
    return deployments[0]


@pytest.fixture(scope="module")
def launcher(values: dict[str, Any]) -> dict[str, Any]:
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    return values["runLauncher"]["config"]["k8sRunLauncher"]


@pytest.fixture(scope="module")
def example_secrets() -> dict[str, dict[str, str]]:
    secrets = [doc for doc in _documents(MANIFESTS / "secrets.example.yaml") if doc["kind"] == "Secret"]
    return {secret["metadata"]["name"]: secret["stringData"] for secret in secrets}


def _env(entries: list[dict[str, str]]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in entries}


def _package_source() -> str:
    return "\n".join(path.read_text() for path in (REPO_ROOT / "medlake_assets").rglob("*.py"))


def test_chart_is_pinned_to_the_dagster_version_of_the_code() -> None:
    dagster_version = importlib.metadata.version("dagster")
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    locked = {package["name"]: package["version"] for package in lock["package"]}
    assert locked["dagster"] == dagster_version
    script = INSTALL_SCRIPT.read_text()
    assert re.findall(r"^CHART_VERSION=(\S+)$", script, re.MULTILINE) == [dagster_version]
    assert '--version "$CHART_VERSION"' in script
    # Every helm command in the operator's guide installs the same chart version.
    doc_versions = re.findall(r"helm upgrade --install .*?--version (\S+)", DEPLOY_DOC.read_text(), re.DOTALL)
    assert doc_versions and set(doc_versions) == {dagster_version}
    subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], check=True)


def test_user_code_image_has_a_unique_tag_never_latest(deployment: dict[str, Any]) -> None:
    image = deployment["image"]
    assert image["repository"] and ":" not in image["repository"].rsplit("/", 1)[-1]
    assert DOCKER_TAG.match(str(image["tag"])) and image["tag"] != "latest"
    # A unique tag never changes content, so nodes may keep the pulled image.
    assert image["pullPolicy"] == "IfNotPresent"
    # The install script replaces the placeholder with the commit's sha and refuses `latest`.
    script = INSTALL_SCRIPT.read_text()
    assert 'IMAGE_TAG="${IMAGE_TAG:-$(git rev-parse --short=12 HEAD)}"' in script
    assert "dagster-user-deployments.deployments[0].image.tag=$IMAGE_TAG" in script


def test_code_server_serves_the_definitions_module(deployment: dict[str, Any]) -> None:
    assert deployment["codeServerArgs"] == ["-m", "medlake_assets.definitions"]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["dagster"]["module_name"] == "medlake_assets.definitions"
    module = importlib.import_module("medlake_assets.definitions")
    assert callable(module.build_definitions)


def test_secrets_referenced_exist_in_the_example_and_hold_no_value(
    values: dict[str, Any],
    deployment: dict[str, Any],
    launcher: dict[str, Any],
    example_secrets: dict[str, dict[str, str]],
) -> None:
    referenced = {
        values["global"]["postgresqlSecretName"],
        *(secret["name"] for secret in deployment["envSecrets"]),
        *(secret["name"] for secret in launcher["envSecrets"]),
        *(secret["name"] for secret in values["dagsterWebserver"]["envSecrets"]),
    }
    serve_sql = next(doc for doc in _documents(MANIFESTS / "serve-sql.yaml") if doc["kind"] == "Deployment")
    container = serve_sql["spec"]["template"]["spec"]["containers"][0]
    referenced |= {source["secretRef"]["name"] for source in container["envFrom"]}
    assert referenced <= set(example_secrets)
    assert "postgresql-password" in example_secrets[values["global"]["postgresqlSecretName"]]
    # An example, never a place for a real password or key.
    assert all(value == "" for data in example_secrets.values() for value in data.values())


def test_every_secret_the_code_reads_is_provided(
    deployment: dict[str, Any], example_secrets: dict[str, dict[str, str]]
) -> None:
    keys = {key for name in (s["name"] for s in deployment["envSecrets"]) for key in example_secrets[name]}
    assert {"MEDLAKE_CATALOG_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    # Each source's archive password reference (metadata/sources), and per-facility overrides of it.
    password_envs = {
        spec.landing.password.env
        for spec in load_sources(REPO_ROOT / "metadata" / "sources").values()
        if spec.landing.password is not None
    }
    assert password_envs and password_envs <= keys
    for key in keys - password_envs:
        if "__" in key:
            assert key.split("__", 1)[0] in password_envs, key
    assert "MEDLAKE_SQL_PASSWORD" in example_secrets["medlake-sql"]
    # The catalog URL carries a password: never a plain env value.
    assert "MEDLAKE_CATALOG_URL" not in _env(deployment["env"])


def test_env_names_are_the_settings_medlake_reads(deployment: dict[str, Any]) -> None:
    env = _env(deployment["env"])
    source = _package_source()
    for name in env:
        if name.startswith("MEDLAKE_"):
            assert f'"{name}"' in source, f"{name} is not read by medlake_assets"
    assert env["MEDLAKE_PROFILE"] == PRODUCTION
    # The production profile accepts exactly these settings once the catalog URL secret is added.
    settings = load_settings({**env, "MEDLAKE_CATALOG_URL": "postgresql+psycopg2://medlake@db:5432/medlake"})
    assert settings.profile == PRODUCTION
    assert settings.store_url.startswith("s3://") and settings.warehouse.startswith("s3://")
    assert settings.s3_endpoint_url is None


def test_run_pods_get_resources_and_the_code_servers_env_from_the_launcher(
    deployment: dict[str, Any], launcher: dict[str, Any]
) -> None:
    # The code location's own config would override the launcher's (its small resources included).
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    container = launcher["runK8sConfig"]["containerConfig"]
    assert container["env"] == deployment["env"]
    assert launcher["envSecrets"] == deployment["envSecrets"]
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert parse_quantity(resources["requests"][kind]) <= parse_quantity(resources["limits"][kind])
    # Above the measured peak of a day's silver run (6.7 GB, docs/benchmarks.md).
    assert parse_quantity(resources["limits"]["memory"]) >= parse_quantity("7Gi")
    assert launcher["loadInclusterConfig"] is True


def _pod(container: dict[str, Any], pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "medlake", "namespace": "medlake"},
        "spec": {**pod_spec, "containers": [{"name": "medlake", **container}]},
    }


def test_kubernetes_fragments_in_the_values_are_valid(
    deployment: dict[str, Any], launcher: dict[str, Any]
) -> None:
    """The parts of the values that the chart copies into pods, as Kubernetes validates them."""
    code_server = _pod(
        {
            "image": f"{deployment['image']['repository']}:{deployment['image']['tag']}",
            "imagePullPolicy": deployment["image"]["pullPolicy"],
            "env": deployment["env"],
            "envFrom": [{"secretRef": secret} for secret in deployment["envSecrets"]],
            "resources": deployment["resources"],
            "securityContext": deployment["securityContext"],
        },
        {"securityContext": deployment["podSecurityContext"]},
    )
    kubernetes_validate.validate(code_server, KUBERNETES_VERSION, strict=True)
    run_config = launcher["runK8sConfig"]
    run_pod = _pod({"image": "medlake:run", **run_config["containerConfig"]}, run_config["podSpecConfig"])
    run_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "dagster-run", "namespace": "medlake"},
        "spec": {
            **run_config["jobSpecConfig"],
            "template": {"spec": {**run_pod["spec"], "restartPolicy": "Never"}},
        },
    }
    kubernetes_validate.validate(run_job, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", sorted(MANIFESTS.glob("*.yaml")), ids=lambda path: path.name)
def test_our_manifests_are_valid_kubernetes(manifest: Path) -> None:
    documents = _documents(manifest)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert document["metadata"]["namespace"] == "medlake"


def test_invalid_manifest_is_refused() -> None:
    """The validator is strict: a misspelt field fails (so the passing tests above mean something)."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringdata": {"A": ""}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)


def test_serve_sql_runs_the_chart_image_and_settings(deployment: dict[str, Any]) -> None:
    serve_sql = next(doc for doc in _documents(MANIFESTS / "serve-sql.yaml") if doc["kind"] == "Deployment")
    container = serve_sql["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert container["command"][:2] == ["medlake", "serve-sql"]
    env = _env(container["env"])
    assert {name: env[name] for name in env} == {
        name: value for name, value in _env(deployment["env"]).items() if name in env
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def test_values_and_template_carry_the_same_policy(
    values: dict[str, Any], template: dict[str, Any], launcher: dict[str, Any]
) -> None:
    daemon = values["dagsterDaemon"]
    # Queue limits only in `concurrency:`, as Dagster 1.13 requires next to pools.
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runCoordinator"]["config"]["queuedRunCoordinator"] == {}
    assert "config" not in template["run_coordinator"]
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert {_snake(k): v for k, v in concurrency["pools"].items()} == template["concurrency"]["pools"]
    runs = concurrency["runs"]
    assert runs["maxConcurrentRuns"] == template["concurrency"]["runs"]["max_concurrent_runs"]
    assert runs["tagConcurrencyLimits"] == template["concurrency"]["runs"]["tag_concurrency_limits"]
    assert [limit["key"] for limit in runs["tagConcurrencyLimits"]] == ["medlake/source"]

    assert {_snake(k): v for k, v in daemon["runMonitoring"].items()} == template["run_monitoring"]
    assert {_snake(k): v for k, v in daemon["runRetries"].items()} == template["run_retries"]
    assert {_snake(k): v for k, v in daemon["sensors"].items()} == template["sensors"]

    launcher_template = template["run_launcher"]["config"]
    assert {_snake(k): v for k, v in launcher["runK8sConfig"].items()} == launcher_template["run_k8s_config"]
    assert [secret["name"] for secret in launcher["envSecrets"]] == launcher_template["env_secrets"]
    assert launcher["imagePullPolicy"] == launcher_template["image_pull_policy"]
    assert values["global"]["postgresqlSecretName"] == launcher_template["postgres_password_secret"]
    s3_logs = values["computeLogManager"]["config"]["s3ComputeLogManager"]
    assert values["computeLogManager"]["type"] == template["compute_logs"]["class"]
    assert s3_logs == template["compute_logs"]["config"]
