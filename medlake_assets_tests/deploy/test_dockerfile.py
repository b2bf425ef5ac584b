"""The Dockerfile builds the environment the tests run in, and the image the Helm values expect.

No Docker engine here: the Dockerfile is parsed (instructions, continuation lines joined) and compared with
pyproject.toml, uv.lock, the Makefile and helm/medlake/values.yaml.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from medlake_assets.lake.memory import ALLOCATOR_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and `\\` continuations joined."""
    instructions = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        logical += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = logical.partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
            logical = ""
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions split by FROM: [build, runtime]."""
    split: list[list[tuple[str, str]]] = []
    for keyword, arguments in instructions:
        if keyword == "FROM":
            split.append([])
        split[-1].append((keyword, arguments))
    assert len(split) == 2, "expected a build stage and a runtime stage"
    return split


def _runtime_env(runtime: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for keyword, arguments in runtime:
        if keyword == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", arguments)))
    return env


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile('# c\nFROM a AS b\nRUN x \\\n    # inner comment\n    && y\nCMD ["z"]\n')
    assert parsed == [("FROM", "a AS b"), ("RUN", "x && y"), ("CMD", '["z"]')]


def test_both_stages_use_the_python_minor_of_the_tests(stages: list[list[tuple[str, str]]]) -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    tests_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for stage in stages:
        image = stage[0][1].split()[0]
        match = re.fullmatch(r"python:(\d+\.\d+)-slim-\w+", image)
        assert match, image
        assert match.group(1) == tests_minor
        assert requires.contains(f"{match.group(1)}.0")


def test_build_installs_the_committed_lock_with_the_pinned_uv(stages: list[list[tuple[str, str]]]) -> None:
    build = stages[0]
    uv_pins = {pin for _, arguments in build for pin in re.findall(r"\buv==([\d.]+)", arguments)}
    makefile_pins = set(re.findall(r"\buv==([\d.]+)", (REPO_ROOT / "Makefile").read_text()))
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    dev_pins = {
        dep.split("==")[1]
        for dep in pyproject["project"]["optional-dependencies"]["dev"]
        if dep.startswith("uv==")
    }
    assert len(uv_pins) == 1 and uv_pins == makefile_pins == dev_pins

    syncs = [arguments for keyword, arguments in build if keyword == "RUN" and "uv sync" in arguments]
    assert syncs and all("--frozen" in sync for sync in syncs)
    # `make install` syncs the same lock, also frozen (the tests add the dev extra on top).
    assert "uv sync --frozen" in (REPO_ROOT / "Makefile").read_text()
    assert "--no-editable" in syncs[-1]
    first_sync = build.index(("RUN", syncs[0]))
    copied_first = " ".join(arguments for keyword, arguments in build[:first_sync] if keyword == "COPY")
    # The lock and the metadata the project build needs are in place before anything is installed.
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        assert name in copied_first.split()
    copies = [arguments.split() for keyword, arguments in build if keyword == "COPY"]
    assert ["medlake_assets", "./medlake_assets"] in copies


def test_runtime_has_the_venv_metadata_and_libarchive(stages: list[list[tuple[str, str]]]) -> None:
    runtime = stages[1]
    copies = [arguments.split() for keyword, arguments in runtime if keyword == "COPY"]
    assert ["--from=build", "/opt/venv", "/opt/venv"] in copies
    assert ["metadata", "/app/metadata"] in copies
    env = _runtime_env(runtime)
    assert env["PATH"].startswith("/opt/venv/bin:")
    # The package is installed into site-packages: it finds its metadata through these settings.
    assert env["MEDLAKE_SOURCES_DIR"] == "/app/metadata/sources"
    assert env["MEDLAKE_REPORTS_DIR"] == "/app/metadata/reports"
    # Every process of the image (code server, daemon, run pods) starts with the allocators set.
    assert ALLOCATOR_ENV.items() <= env.items()
    for folder in ("sources", "reports"):
        assert any((REPO_ROOT / "metadata" / folder).iterdir())
    config = (REPO_ROOT / "medlake_assets" / "lake" / "settings.py").read_text()
    assert (
        '"MEDLAKE_SOURCES_DIR"' in config and '"MEDLAKE_REPORTS_DIR"' in config and '"MEDLAKE_HOME"' in config
    )
    runs = " ".join(arguments for keyword, arguments in runtime if keyword == "RUN")
    # The same system library scripts/ensure_system_deps.sh installs for the tests.
    assert (
        "libarchive13" in runs
        and "libarchive13" in (REPO_ROOT / "scripts" / "ensure_system_deps.sh").read_text()
    )
    # MEDLAKE_HOME (report pages) and Dagster's home must be writable by the image's user.
    assert f"chown 10001:10001 {env['MEDLAKE_HOME']} /opt/dagster/dagster_home" in runs


def test_runs_as_the_non_root_uid_the_chart_expects(stages: list[list[tuple[str, str]]]) -> None:
    users = [arguments for keyword, arguments in stages[1] if keyword == "USER"]
    assert users == ["10001"]
    values = yaml.safe_load((REPO_ROOT / "helm" / "medlake" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["podSecurityContext"]["runAsUser"] == 10001
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert run_pod["securityContext"]["runAsUser"] == 10001


def test_cmd_runs_the_code_server_the_helm_values_name(stages: list[list[tuple[str, str]]]) -> None:
    commands = [arguments for keyword, arguments in stages[1] if keyword == "CMD"]
    assert len(commands) == 1
    command = json.loads(commands[0])
    values = yaml.safe_load((REPO_ROOT / "helm" / "medlake" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    # The chart starts `dagster code-server start -h 0.0.0.0 -p <port> <codeServerArgs>`: the same command.
    assert command == [
        "dagster",
        "code-server",
        "start",
        "-h",
        "0.0.0.0",
        "-p",
        str(deployment["port"]),
        *deployment["codeServerArgs"],
    ]
    exposed = [arguments for keyword, arguments in stages[1] if keyword == "EXPOSE"]
    assert exposed == [str(deployment["port"])]


def test_dockerignore_keeps_state_and_secrets_out_but_not_what_the_build_copies(
    stages: list[list[tuple[str, str]]],
) -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for local_state in (".medlake", ".venv", ".git"):
        assert local_state in patterns
    assert "**/*.env" in patterns
    sources = {
        source
        for stage in stages
        for keyword, arguments in stage
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    }
    assert sources == {"pyproject.toml", "uv.lock", "README.md", "medlake_assets", "metadata"}
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not any(fnmatch.fnmatch(source, pattern.removeprefix("**/")) for pattern in patterns), source
