"""One error base: every error class medlake defines derives from MedlakeError, and the `medlake`
command prints an unhandled one as a single line (exit 2), as an operator sees it."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import medlake_assets
import medlake_dev
from medlake_assets.errors import MedlakeError
from medlake_assets.spec.loader import SpecError

ROOT = Path(__file__).resolve().parents[1]


def defined_error_classes() -> dict[str, type]:
    found = {}
    modules = [
        *pkgutil.walk_packages(medlake_assets.__path__, "medlake_assets."),
        *pkgutil.walk_packages(medlake_dev.__path__, "medlake_dev."),
    ]
    for module_info in modules:
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_public_error_class_derives_from_medlake_error():
    classes = defined_error_classes()
    # The walk reaches both packages' modules.
    assert "medlake_assets.spec.loader.SpecError" in classes
    assert "medlake_dev.generate.feeds.MissingPasswordError" in classes
    strays = sorted(
        name
        for name, cls in classes.items()
        if not issubclass(cls, MedlakeError) and not cls.__name__.startswith("_")
    )
    assert strays == []
    assert issubclass(SpecError, ValueError)  # callers that catch the built-in kind still do


def test_the_command_prints_an_unhandled_medlake_error_as_one_line(tmp_path):
    sources = tmp_path / "sources"
    sources.mkdir()
    for path in (ROOT / "metadata" / "sources").glob("*.yaml"):
        (sources / path.name).write_text(path.read_text())
    (sources / "broken_feed.yaml").write_text("name: broken_feed\nformat: {type: nothing_we_know}\n")
    env = {**os.environ, "MEDLAKE_HOME": str(tmp_path / "home"), "MEDLAKE_SOURCES_DIR": str(sources)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "medlake"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {sources / 'broken_feed.yaml'}: ")
    assert "format: " in line
