"""Load and validate `metadata/sources/*.yaml`, merging `_defaults.yaml` under every file."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medlake_assets.errors import MedlakeError
from medlake_assets.spec.models import Hl7Format, SourceSpec, XmlFormat

DEFAULTS_FILE = "_defaults.yaml"
# libyaml's safe loader: the same documents as PyYAML's pure-Python one, a tenth of the time (every run
# process reads the sources and reports when it loads its definitions).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load` of `text`, with libyaml when PyYAML has it; raises `yaml.YAMLError`."""
    return yaml.load(text, Loader=_SAFE_LOADER)


class SpecError(MedlakeError, ValueError):
    """A source metadata file is invalid; the message names the file and the field."""


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{field}: {item['msg']}")
    return "; ".join(lines)


def load_source(path: Path, defaults: dict[str, Any] | None = None) -> SourceSpec:
    """Validate one source file; the error names the file and every offending field."""
    data = deep_merge(defaults or {}, _read_yaml(path))
    try:
        spec = SourceSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{path}: {_describe(error)}") from None
    if spec.name != path.stem:
        raise SpecError(f"{path}: name: {spec.name!r} must equal the file name {path.stem!r}")
    _check_parsable(spec, path)
    return spec


def _check_parsable(spec: SourceSpec, path: Path) -> None:
    """Compile what the parsers will use (HL7 paths, XPaths, codecs) so a typo fails at load, not per file."""
    from lxml import etree

    from medlake_assets.ingest.parsers.hl7 import Hl7PathError, parse_hl7_path

    for field, name in [("landing.encoding", spec.landing.encoding)] + [
        (f"landing.encoding_fallbacks.{i}", name) for i, name in enumerate(spec.landing.encoding_fallbacks)
    ]:
        try:
            codecs.lookup(name)
        except LookupError:
            raise SpecError(f"{path}: {field}: unknown encoding {name!r}") from None
    fmt = spec.format
    if isinstance(fmt, XmlFormat):
        try:
            etree.XPath(fmt.record_xpath, namespaces=fmt.namespaces)
        except etree.XPathError as error:
            raise SpecError(f"{path}: format.record_xpath: invalid XPath ({error})") from None
    for index, column in enumerate(spec.columns):
        try:
            if isinstance(fmt, Hl7Format):
                parse_hl7_path(column.source)
            elif isinstance(fmt, XmlFormat):
                etree.XPath(column.source, namespaces=fmt.namespaces)
        except (Hl7PathError, etree.XPathError) as error:
            raise SpecError(f"{path}: columns.{index}.source: {error}") from None


def load_sources(directory: Path) -> dict[str, SourceSpec]:
    """Every source in `directory`, by name; fails fast if the folder is missing or empty."""
    if not directory.is_dir():
        raise SpecError(f"{directory}: source metadata folder not found")
    defaults_path = directory / DEFAULTS_FILE
    defaults = _read_yaml(defaults_path) if defaults_path.exists() else {}
    specs = {}
    for path in sorted(directory.glob("*.yaml")):
        if path.name == DEFAULTS_FILE:
            continue
        spec = load_source(path, defaults)
        specs[spec.name] = spec
    if not specs:
        raise SpecError(f"{directory}: no source metadata files (*.yaml)")
    for table in {name for spec in specs.values() for name in spec.derived}:
        if len(owners := sorted(spec.name for spec in specs.values() if table in spec.derived)) > 1:
            raise SpecError(f"{directory}: derived: silver.{table} is derived by several sources {owners}")
    return specs
