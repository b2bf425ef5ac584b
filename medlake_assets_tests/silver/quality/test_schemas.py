"""Schemas generated from the real metadata, and checks that cannot apply failing the build with a message."""

from __future__ import annotations

import polars as pl
import pytest

from medlake_assets.silver.quality import LINEAGE, Rule, SchemaBuildError, build_schema, rules
from medlake_assets.spec import SourceSpec

UTC_US = pl.Datetime("us", "UTC")


def with_changes(spec: SourceSpec, checks: list[dict], columns: list[dict] | None = None) -> SourceSpec:
    data = spec.model_dump()
    data["columns"] += columns or []
    data["checks"] = checks
    return SourceSpec.model_validate(data)


def test_lab_results_schema_types_nullability_and_rules(sources: dict[str, SourceSpec]) -> None:
    schema = build_schema(sources["lab_results"])

    declared = {
        name: (column.dtype.type, column.nullable, [check.error for check in column.checks])
        for name, column in schema.columns.items()
    }
    required = ["facility_id", "patient_id", "order_id", "test_code", "result_status", "result_ts"]
    assert declared == {
        **{name: (pl.String(), name not in required, []) for name in sources["lab_results"].column_names()},
        "test_code": (pl.String(), False, ["check.regex:test_code"]),
        "result_status": (pl.String(), False, ["check.allowed:result_status"]),
        "result_ts": (UTC_US, False, []),
        **{name: (dtype, True, []) for name, dtype in LINEAGE.items()},
    }
    assert list(declared) == [*sources["lab_results"].column_names(), *LINEAGE]
    assert schema.strict is False and schema.name == "lab_results"
    assert rules(schema) == {
        **{
            f"check.not_null:{name}": Rule(
                f"check.not_null:{name}",
                "error",
                f"{name} is empty but the column is required (not null)",
                (name,),
                order,
            )
            for order, name in enumerate(required)
        },
        "check.allowed:result_status": Rule(
            "check.allowed:result_status",
            "error",
            "result_status is not one of the 3 allowed values",
            ("result_status",),
            6,
        ),
        "check.regex:test_code": Rule(
            "check.regex:test_code",
            "error",
            "test_code does not match the pattern ^\\d{1,7}-\\d$",
            ("test_code",),
            7,
        ),
    }


def test_every_real_source_builds_with_its_rules(sources: dict[str, SourceSpec]) -> None:
    codes = {
        name: {
            code: rule.severity for code, rule in rules(build_schema(spec)).items() if "not_null" not in code
        }
        for name, spec in sources.items()
    }
    assert codes == {
        "adt_events": {"check.allowed:trigger_event": "warn"},
        "bed_census": {"check.allowed:status": "error"},
        "lab_results": {"check.allowed:result_status": "error", "check.regex:test_code": "error"},
        "patient_documents": {},
    }
    # patient_documents' explicit not_null on a `nullable: false` column is the same single rule.
    documents = rules(build_schema(sources["patient_documents"]))
    assert list(documents) == [
        "check.not_null:document_id",
        "check.not_null:effective_ts",
        "check.not_null:patient_id",
    ]


def test_declared_types_map_to_polars(sources: dict[str, SourceSpec]) -> None:
    columns = [
        {"name": f"c_{type_}", "type": type_, "source": type_}
        for type_ in ["int", "long", "double", "boolean", "date", "decimal"]
    ] + [{"name": "c_money", "type": "decimal", "source": "money", "format": "10,2"}]
    schema = build_schema(with_changes(sources["bed_census"], [], columns))
    assert {name: column.dtype.type for name, column in schema.columns.items() if name.startswith("c_")} == {
        "c_int": pl.Int32(),
        "c_long": pl.Int64(),
        "c_double": pl.Float64(),
        "c_boolean": pl.Boolean(),
        "c_date": pl.Date(),
        "c_decimal": pl.Decimal(38, 9),
        "c_money": pl.Decimal(10, 2),
    }


def test_warn_not_null_and_allowed_values_cast_to_the_column_type(sources: dict[str, SourceSpec]) -> None:
    spec = with_changes(
        sources["bed_census"],
        [
            {"rule": "not_null", "column": "patient_id", "severity": "warn"},
            {"rule": "allowed", "column": "beds", "values": ["1", "2"]},
        ],
        [{"name": "beds", "type": "int", "source": "beds"}],
    )
    schema = build_schema(spec)
    assert schema.columns["patient_id"].nullable is True
    assert [check.error for check in schema.columns["patient_id"].checks] == ["check.not_null:patient_id"]
    assert schema.columns["beds"].checks[0].statistics == {"allowed_values": [1, 2]}
    assert rules(schema)["check.not_null:patient_id"].severity == "warn"


def test_error_not_null_on_a_nullable_column_makes_it_required(sources: dict[str, SourceSpec]) -> None:
    spec = with_changes(
        sources["bed_census"],
        [
            {"rule": "not_null", "column": "patient_id"},
            {"rule": "not_null", "column": "bed_id", "severity": "warn"},  # already required: no second rule
        ],
    )
    schema = build_schema(spec)
    assert schema.columns["patient_id"].nullable is False
    assert schema.columns["patient_id"].checks == []
    assert rules(schema)["check.not_null:patient_id"].severity == "error"
    assert [code for code in rules(schema) if "bed_id" in code] == ["check.not_null:bed_id"]
    assert rules(schema)["check.not_null:bed_id"].severity == "error"


@pytest.mark.parametrize(
    ("check", "columns", "message"),
    [
        (
            {"rule": "range", "column": "status", "min": 0},
            [],
            "source bed_census: range check on status: range needs a numeric column, not string",
        ),
        (
            {"rule": "range", "column": "beds"},
            [{"name": "beds", "type": "int", "source": "beds"}],
            "source bed_census: range check on beds: range needs min, max or both",
        ),
        (
            {"rule": "regex", "column": "updated_at", "pattern": "^2"},
            [],
            "source bed_census: regex check on updated_at: regex needs a string column, not timestamp",
        ),
        (
            {"rule": "regex", "column": "bed_id", "pattern": "(?<=B)\\d"},
            [],
            "source bed_census: regex check on bed_id: pattern is not a valid (Rust) regular expression",
        ),
        (
            {"rule": "allowed", "column": "beds", "values": ["one"]},
            [{"name": "beds", "type": "int", "source": "beds"}],
            "source bed_census: allowed check on beds: values are not all of type int",
        ),
        (
            {"rule": "allowed", "column": "status"},
            [],
            "source bed_census: allowed check on status: allowed needs values",
        ),
        ({"rule": "range", "min": 1}, [], "source bed_census: a range check needs `column`"),
    ],
)
def test_checks_that_cannot_apply_fail_the_build(
    sources: dict[str, SourceSpec], check: dict, columns: list[dict], message: str
) -> None:
    with pytest.raises(SchemaBuildError) as raised:
        build_schema(with_changes(sources["bed_census"], [check], columns))
    assert str(raised.value) == message


def test_unique_without_key_on_an_append_source_fails(sources: dict[str, SourceSpec]) -> None:
    with pytest.raises(
        SchemaBuildError, match="^source adt_events: a unique check needs `columns` or a write"
    ):
        build_schema(with_changes(sources["adt_events"], [{"rule": "unique"}]))


def test_unique_key_defaults(sources: dict[str, SourceSpec]) -> None:
    def unique_rule(spec: SourceSpec, check: dict) -> tuple[str, tuple[str, ...]]:
        [rule] = [
            rule
            for rule in rules(build_schema(with_changes(spec, [check]))).values()
            if "unique" in rule.code
        ]
        return rule.code, rule.columns

    assert unique_rule(sources["patient_documents"], {"rule": "unique"}) == (
        "check.unique:patient_id,effective_ts",
        ("patient_id", "effective_ts"),
    )
    assert unique_rule(sources["adt_events"], {"rule": "unique", "column": "message_control_id"}) == (
        "check.unique:message_control_id",
        ("message_control_id",),
    )
