"""Source metadata: the shipped files load; invalid files fail naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medlake_assets.lake.settings import DEFAULT_SOURCES_DIR
from medlake_assets.spec import SpecError, load_sources
from medlake_assets.spec.models import facility_env_suffix

VALID = {
    "name": "feed",
    "landing": {
        "key_pattern": r"^landing/feed/(?P<yyyy>\d{4})/(?P<mm>\d{2})/(?P<dd>\d{2})/(?P<facility>\w+)/.+$",
        "password": {"env": "FEED_PASSWORD"},
    },
    "format": {"kind": "csv"},
    "columns": [
        {"name": "id", "source": "id"},
        {"name": "seen_at", "source": "seen_at", "type": "timestamp"},
    ],
}


def write_source(folder: Path, data: dict, name: str = "feed") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_change(path: list[str | int], value: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()


def test_shipped_sources_load(sources):
    assert sorted(sources) == ["adt_events", "bed_census", "lab_results", "patient_documents"]
    adt = sources["adt_events"]
    assert adt.format.kind == "hl7v2"
    assert {c.name: c.source for c in adt.columns}["bed"] == "PV1-3.3"
    assert adt.pii_columns() == ["patient_id", "family_name", "given_name", "birth_date", "visit_number"]
    # _defaults.yaml is merged under every file
    assert all(spec.landing.password.env == "MEDLAKE_ARCHIVE_PASSWORD" for spec in sources.values())
    assert sources["lab_results"].write.primary_key == ["facility_id", "order_id", "test_code"]
    # Every shipped column says what silver_deid does with it (an undeclared one would be left out).
    assert [(s.name, c.name) for s in sources.values() for c in s.columns if c.deid is None] == []


def test_minimal_valid_source(tmp_path):
    write_source(tmp_path, VALID)
    spec = load_sources(tmp_path)["feed"]
    assert spec.landing.archives == ["zip"]
    assert spec.ingest.max_archives_per_run == 500


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((["landing", "password"], "hunter2"), "landing.password: Input should be a valid dictionary"),
        (
            (["landing", "password"], DELETE),
            "landing: Value error, a zip source needs `password: {env: ...}`",
        ),
        ((["landing", "key_pattern"], "^landing/(?P<yyyy>\\d{4})/x$"), "key_pattern needs the named groups"),
        ((["landing", "key_pattern"], "(unclosed"), "landing.key_pattern: Value error, not a valid regular"),
        ((["landing", "archives"], ["rar"]), "landing.archives.0: Input should be 'zip', 'gzip' or 'none'"),
        ((["format", "kind"], "parquet"), "format: Input tag 'parquet' found using 'kind' does not match"),
        ((["columns", 0, "nmae"], "typo"), "columns.0.nmae: Extra inputs are not permitted"),
        ((["columns", 1, "type"], "datetime"), "columns.1.type: Input should be"),
        ((["columns"], []), "columns: List should have at least 1 item"),
        ((["write"], {"mode": "upsert"}), "write: Value error, write mode 'upsert' needs primary_key"),
        (
            (["write"], {"mode": "upsert", "primary_key": ["nope"], "sequence_by": ["seen_at"]}),
            "unknown columns",
        ),
        ((["columns", 1, "name"], "id"), "duplicate column names ['id']"),
        ((["landing", "password", "env"], "lower-case"), "landing.password.env: String should match pattern"),
        ((["name"], DELETE), "name: Field required"),
        (
            (["columns", 0, "deid"], "hash"),
            "columns.0.deid: Input should be 'keep', 'token', 'shift' or 'drop'",
        ),
        (
            (["columns", 0, "deid"], "shift"),
            "deid: only date and timestamp columns are shifted, this one is string",
        ),
        (
            (["columns", 1, "deid"], "keep"),
            "columns.1: Value error, deid: a date or timestamp is `shift` or `drop`",
        ),
        (
            (["columns", 0], {"name": "id", "source": "id", "pii": True, "deid": "keep"}),
            "columns.0: Value error, deid: a pii column is `token`, `shift` or `drop`, never `keep`",
        ),
        (
            (["quality"], {"facilities": {"F1": {"max_error_rate": 1.5}}}),
            "quality.facilities.F1.max_error_rate: Input should be less than or equal to 1",
        ),
        ((["quality"], {"min_rows": 0}), "quality.min_rows: Input should be greater than or equal to 1"),
        (
            (["quality"], {"facility_freshness": {"late_factor": 1}}),
            "quality.facility_freshness.late_factor: Input should be greater than 1",
        ),
        (
            (["quality"], {"facilities": {"F1": {"max_lag": 60}}}),
            "quality.facilities.F1.max_lag: Extra inputs",
        ),
    ],
)
def test_invalid_source_names_file_and_field(tmp_path, change, message):
    path = write_source(tmp_path, with_change(*change))
    with pytest.raises(SpecError) as raised:
        load_sources(tmp_path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (with_change(["landing", "encoding"], "utf-9"), "landing.encoding: unknown encoding 'utf-9'"),
        (
            with_change(["format"], {"kind": "hl7v2"}) | {"columns": [{"name": "id", "source": "PID3"}]},
            "columns.0.source:",
        ),
        (
            with_change(["format"], {"kind": "xml", "record_xpath": "/x:doc", "namespaces": {"x": "urn:x"}})
            | {"columns": [{"name": "id", "source": "string(x:id/@"}]},
            "columns.0.source:",
        ),
        (with_change(["format"], {"kind": "xml", "record_xpath": "//["}), "format.record_xpath: invalid"),
    ],
)
def test_parser_inputs_are_compiled_at_load(tmp_path, data, message):
    path = write_source(tmp_path, data)
    with pytest.raises(SpecError) as raised:
        load_sources(tmp_path)
    assert f"{path}: {message}" in str(raised.value)


def test_name_must_match_file(tmp_path):
    path = write_source(tmp_path, VALID, name="other")
    with pytest.raises(SpecError, match=f"{path}: name: 'feed' must equal the file name 'other'"):
        load_sources(tmp_path)


def test_defaults_are_merged_and_overridden(tmp_path):
    (tmp_path / "_defaults.yaml").write_text(
        "owner: team@x.example\ningest: {max_archives_per_run: 7, open_days: 3}\n"
    )
    write_source(tmp_path, with_change(["ingest"], {"open_days": 1}))
    spec = load_sources(tmp_path)["feed"]
    assert (spec.owner, spec.ingest.max_archives_per_run, spec.ingest.open_days) == ("team@x.example", 7, 1)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(SpecError, match="source metadata folder not found"):
        load_sources(tmp_path / "absent")
    with pytest.raises(SpecError, match="no source metadata files"):
        load_sources(tmp_path)


def test_password_reference_resolves_per_facility(sources):
    ref = sources["lab_results"].landing.password
    environ = {"MEDLAKE_ARCHIVE_PASSWORD": "shared", "MEDLAKE_ARCHIVE_PASSWORD__F_0003": "own"}
    assert facility_env_suffix("f-0003") == "F_0003"
    assert ref.resolve("f-0003", environ) == "own"
    assert ref.resolve("F0001", environ) == "shared"
    assert ref.resolve("F0001", {}) is None


def test_a_derived_table_has_one_source(tmp_path):
    for path in DEFAULT_SOURCES_DIR.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    assert [name for name, spec in load_sources(tmp_path).items() if spec.derived] == ["adt_events"]
    second = (tmp_path / "adt_events.yaml").read_text().replace("name: adt_events", "name: adt_copy", 1)
    (tmp_path / "adt_copy.yaml").write_text(second.replace("landing/adt_events/", "landing/adt_copy/"))
    with pytest.raises(
        SpecError, match=r"silver.encounters is derived by several sources \['adt_copy', 'adt_events'\]"
    ):
        load_sources(tmp_path)
