"""The gate on typed lab_results- and bed_census-shaped batches with planted violations of every rule."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from medlake_assets.silver.quality import (
    COUNTS_SCHEMA,
    GateSchemaError,
    build_schema,
    evaluate,
    facility_gate,
    freshness_sla,
    gate_decision,
    metadata_version,
    summary,
)
from medlake_assets.spec import SourceSpec

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
LAB_EXTRA_CHECKS = [
    {"rule": "range", "column": "value_num", "min": 0, "max": 1000},
    {"rule": "range", "column": "value_num", "max": 500, "severity": "warn"},
    {"rule": "unique"},
    {"rule": "not_null", "column": "unit", "severity": "warn"},
    {"rule": "allowed", "column": "abnormal_flag", "values": ["L", "H", "N"], "severity": "warn"},
]


def extended(spec: SourceSpec, checks: list[dict], columns: list[dict] | None = None) -> SourceSpec:
    """The real metadata plus extra checks (and columns), validated like a YAML file."""
    data = spec.model_dump()
    data["columns"] += columns or []
    data["checks"] += checks
    return SourceSpec.model_validate(data)


@pytest.fixture(scope="module")
def lab_spec(sources: dict[str, SourceSpec]) -> SourceSpec:
    # lab_results declares `value` as text ("<5", "positive"); a numeric column gives range rules a target.
    return extended(
        sources["lab_results"],
        LAB_EXTRA_CHECKS,
        [{"name": "value_num", "type": "double", "source": "value_num"}],
    )


def lineage(frame: pl.DataFrame, facility: list[str]) -> pl.DataFrame:
    return frame.with_columns(
        pl.lit("landing/a1.zip").alias("_archive"),
        pl.lit("results.csv").alias("_member"),
        pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias("_record"),
        pl.Series("_facility", facility),
        pl.lit(date(2026, 3, 1)).alias("_landing_day"),
        pl.lit(T0).dt.cast_time_unit("us").alias("_ingested_at"),
        pl.lit("batch-1").alias("_batch"),
    )


def lab_frame() -> pl.DataFrame:
    """15 rows; `_record` = position + 1. Planted values are distinctive so a leak would show in reasons."""
    base = {
        "facility_id": "FAC1",
        "patient_id": "PAT0001",
        "order_id": "ORD0001",
        "test_code": "2345-7",
        "test_name": "Glucose",
        "value": "5.1",
        "unit": "mmol/L",
        "reference_range": "3.9-5.5",
        "abnormal_flag": None,
        "result_status": "F",
        "result_ts": T0,
        "value_num": 5.1,
    }
    changes: list[dict] = [
        {},  # 1 clean
        {"order_id": "ORD0002", "result_status": "ZZQ"},  # 2 allowed (error)
        {"order_id": "ORD0003", "test_code": "BADCODE"},  # 3 regex (error)
        {"order_id": "ORD0004", "patient_id": None},  # 4 not_null (error, declared nullable: false)
        {"order_id": "ORD0005", "value_num": 2000.0},  # 5 range (error) and range#2 (warn)
        {"order_id": "ORD0006", "value_num": 700.0},  # 6 range#2 (warn) only: passes
        {"order_id": "ORD0007", "unit": None},  # 7 not_null warn: passes
        {"order_id": "ORD0008", "abnormal_flag": "QQQ"},  # 8 allowed warn: passes
        {"order_id": "ORD0009"},  # 9 and 10: the same event twice, idempotent: both pass
        {"order_id": "ORD0009"},
        {"order_id": "ORD0011", "value_num": 6.25},  # 11 and 12: same key and sequence, other content
        {"order_id": "ORD0011", "value_num": 9.75},
        {"order_id": "ORD0013", "patient_id": None, "result_status": "ZZQ", "test_code": "BADCODE"},  # 13
        {"result_ts": T0 + timedelta(minutes=5)},  # 14 a later version of row 1's key: passes
        {"order_id": "ORD0015", "test_code": None},  # 15 null test_code: not_null only, regex skips nulls
    ]
    rows = [base | change for change in changes]
    facility = ["FAC1", "FAC1", "FAC2", "FAC2", "FAC1", "FAC1", "FAC2", "FAC2"] + ["FAC1"] * 4 + ["FAC2"] * 3
    frame = pl.DataFrame(
        rows,
        schema={
            **{name: pl.String() for name in base if name not in ("result_ts", "value_num")},
            "result_ts": pl.Datetime("us", "UTC"),
            "value_num": pl.Float64(),
        },
    ).select(list(base))
    return lineage(frame, facility).with_columns(pl.lit("+0000").alias("result_ts_offset"))


LAB_REJECTED = {
    2: ("check.allowed:result_status", "result_status is not one of the 3 allowed values"),
    3: ("check.regex:test_code", "test_code does not match the pattern ^\\d{1,7}-\\d$"),
    4: ("check.not_null:patient_id", "patient_id is empty but the column is required (not null)"),
    5: ("check.range:value_num", "value_num is outside the range [0, 1000]"),
    11: (
        "check.unique:facility_id,order_id,test_code,result_ts,result_status",
        "another row of this batch has the same facility_id, order_id, test_code, result_ts, result_status "
        "but different content",
    ),
    13: (
        "check.not_null:patient_id;check.allowed:result_status;check.regex:test_code",
        "patient_id is empty but the column is required (not null); result_status is not one of the 3 "
        "allowed values; test_code does not match the pattern ^\\d{1,7}-\\d$",
    ),
    15: ("check.not_null:test_code", "test_code is empty but the column is required (not null)"),
}
LAB_REJECTED[12] = LAB_REJECTED[11]


def test_lab_rows_route_by_rule_and_nothing_is_dropped(lab_spec: SourceSpec) -> None:
    frame = lab_frame()
    result = evaluate(frame, lab_spec)

    rejected = {
        record: (rule, reason)
        for record, rule, reason in result.rejected.select("_record", "rule", "reason").rows()
    }
    assert rejected == LAB_REJECTED
    assert result.passed["_record"].to_list() == [1, 6, 7, 8, 9, 10, 14]
    assert result.rows == frame.height == len(result.passed) + len(result.rejected)
    # Rows keep every column and value; the rejected ones gain rule and reason.
    assert result.passed.columns == frame.columns
    assert result.rejected.columns == [*frame.columns, "rule", "reason"]
    assert pl.concat([result.passed, result.rejected.drop("rule", "reason")]).sort("_record").equals(frame)


def test_lab_counts_per_rule_severity_and_facility(lab_spec: SourceSpec) -> None:
    result = evaluate(lab_frame(), lab_spec)

    assert result.errors == {
        "check.not_null:patient_id": 2,
        "check.not_null:test_code": 1,
        "check.allowed:result_status": 2,
        "check.regex:test_code": 2,
        "check.range:value_num": 1,
        "check.unique:facility_id,order_id,test_code,result_ts,result_status": 2,
    }
    assert result.warnings == {
        "check.range:value_num#2": 2,
        "check.not_null:unit": 1,
        "check.allowed:abnormal_flag": 1,
    }
    assert result.counts.schema == pl.Schema(COUNTS_SCHEMA)
    assert result.counts.rows() == [
        ("check.not_null:patient_id", "error", "FAC2", 2),
        ("check.not_null:test_code", "error", "FAC2", 1),
        ("check.allowed:result_status", "error", "FAC1", 1),
        ("check.allowed:result_status", "error", "FAC2", 1),
        ("check.regex:test_code", "error", "FAC2", 2),
        ("check.range:value_num", "error", "FAC1", 1),
        ("check.range:value_num#2", "warn", "FAC1", 2),
        ("check.unique:facility_id,order_id,test_code,result_ts,result_status", "error", "FAC1", 2),
        ("check.not_null:unit", "warn", "FAC2", 1),
        ("check.allowed:abnormal_flag", "warn", "FAC2", 1),
    ]


def test_reasons_never_hold_a_value(lab_spec: SourceSpec) -> None:
    result = evaluate(lab_frame(), lab_spec)
    data = [name for name in lab_spec.column_names()]
    for row in result.rejected.iter_rows(named=True):
        values = {str(row[name]) for name in data if row[name] is not None}
        leaked = [value for value in values if value in row["reason"] or value in row["rule"]]
        assert leaked == [], row["_record"]
    assert {"ZZQ", "BADCODE", "2000.0", "2000"}.isdisjoint(" ".join(result.rejected["reason"]).split())


def test_gate_decision_threshold_rate_and_top_rules(lab_spec: SourceSpec) -> None:
    result = evaluate(lab_frame(), lab_spec)
    rate = 8 / 15

    assert gate_decision(result, 0.5) == (
        False,
        rate,
        [
            ("check.allowed:result_status", 2),
            ("check.not_null:patient_id", 2),
            ("check.regex:test_code", 2),
            ("check.unique:facility_id,order_id,test_code,result_ts,result_status", 2),
            ("check.not_null:test_code", 1),
        ],
    )
    assert gate_decision(result, rate, top=1) == (True, rate, [("check.allowed:result_status", 2)])
    assert summary(result, top=1) == {
        "rows": 15,
        "passed": 7,
        "rejected": 8,
        "error_rate": rate,
        "errors": result.errors,
        "warnings": result.warnings,
        "top_facilities": {"FAC2": 8},
    }


def test_clean_and_empty_batches_pass(lab_spec: SourceSpec) -> None:
    frame = lab_frame()
    clean = evaluate(frame.filter(pl.col("_record").is_in([1, 6, 7, 8, 9, 10, 14])), lab_spec)
    assert (len(clean.passed), len(clean.rejected), clean.errors) == (7, 0, {})
    assert gate_decision(clean, 0.0) == (True, 0.0, [])

    empty = evaluate(frame.clear(), lab_spec)
    assert (empty.rows, len(empty.passed), len(empty.rejected), empty.counts.height) == (0, 0, 0, 0)
    assert gate_decision(empty, 0.0) == (True, 0.0, [])


def bed_frame() -> pl.DataFrame:
    rows = [
        ("FAC1", "ICU", "B01", "occupied", "PAT0001", T0),  # 1 clean
        ("FAC1", "ICU", "B02", "haunted", None, T0),  # 2 allowed status
        ("FAC1", "ICU", "B03", "available", None, None),  # 3 updated_at required
        ("FAC2", "WARD 2", "B01", "cleaning", None, T0),  # 4 and 5: the same snapshot twice: pass
        ("FAC2", "WARD 2", "B01", "cleaning", None, T0),
        ("FAC2", "WARD 2", "B07", "occupied", "PAT0002", T0),  # 6 and 7: one bed, one time, two states
        ("FAC2", "WARD 2", "B07", "available", None, T0),
        ("FAC2", "WARD 2", "B07", "blocked", None, T0 + timedelta(minutes=1)),  # 8 later state: passes
        ("FAC1", "ICU", "B01", "cleaning", None, T0 + timedelta(minutes=2)),  # 9 later state of row 1
    ]
    frame = pl.DataFrame(
        rows,
        schema={
            "facility_id": pl.String(),
            "unit": pl.String(),
            "bed_id": pl.String(),
            "status": pl.String(),
            "patient_id": pl.String(),
            "updated_at": pl.Datetime("us", "UTC"),
        },
        orient="row",
    )
    return lineage(frame, [row[0] for row in rows])


def test_bed_census_upsert_key_duplicates(sources: dict[str, SourceSpec]) -> None:
    # The write key of an upsert source (primary key + sequence) when the rule names no columns.
    spec = extended(sources["bed_census"], [{"rule": "unique"}])
    result = evaluate(bed_frame(), spec)

    unique = "check.unique:facility_id,bed_id,updated_at"
    assert result.rejected.select("_record", "rule").rows() == [
        (2, "check.allowed:status"),
        (3, "check.not_null:updated_at"),
        (6, unique),
        (7, unique),
    ]
    assert result.rejected["reason"].to_list()[:3] == [
        "status is not one of the 4 allowed values",
        "updated_at is empty but the column is required (not null)",
        "another row of this batch has the same facility_id, bed_id, updated_at but different content",
    ]
    assert result.passed["_record"].to_list() == [1, 4, 5, 8, 9]
    assert result.counts.rows() == [
        ("check.not_null:updated_at", "error", "FAC1", 1),
        ("check.allowed:status", "error", "FAC1", 1),
        (unique, "error", "FAC2", 2),
    ]
    assert result.warnings == {}


def test_bed_census_unique_over_named_columns(sources: dict[str, SourceSpec]) -> None:
    # A snapshot file listing each bed once: the later states of B07 and B01 now conflict too.
    spec = extended(sources["bed_census"], [{"rule": "unique", "columns": ["facility_id", "bed_id"]}])
    result = evaluate(bed_frame(), spec)

    assert result.rejected.filter(pl.col("rule") == "check.unique:facility_id,bed_id")[
        "_record"
    ].to_list() == [
        1,
        6,
        7,
        8,
        9,
    ]
    # The same snapshot twice is still one bed state, not a conflict.
    assert result.passed["_record"].to_list() == [4, 5]


def test_bed_census_real_metadata_only(sources: dict[str, SourceSpec]) -> None:
    result = evaluate(bed_frame(), sources["bed_census"])
    assert result.rejected["_record"].to_list() == [2, 3]
    assert result.errors == {"check.not_null:updated_at": 1, "check.allowed:status": 1}


def test_adt_warn_rule_counts_but_passes(sources: dict[str, SourceSpec]) -> None:
    spec = sources["adt_events"]
    schema = build_schema(spec)
    events = ["A01", "A03", "A31", "A31"]
    frame = pl.DataFrame(
        {
            name: pl.Series(name, [None] * len(events), dtype=column.dtype.type)
            for name, column in schema.columns.items()
        }
    ).with_columns(
        pl.Series("message_control_id", ["M1", "M2", "M3", "M4"]),
        pl.lit("ADT").alias("message_type"),
        pl.Series("trigger_event", events),
        pl.lit(T0).dt.cast_time_unit("us").alias("message_ts"),
        pl.lit("PAT0001").alias("patient_id"),
        pl.Series("_facility", ["FAC1", "FAC1", "FAC1", "FAC2"]),
    )
    result = evaluate(frame, spec, schema=schema)

    assert (len(result.passed), len(result.rejected)) == (4, 0)
    assert result.warnings == {"check.allowed:trigger_event": 2}
    assert result.counts.rows() == [
        ("check.allowed:trigger_event", "warn", "FAC1", 1),
        ("check.allowed:trigger_event", "warn", "FAC2", 1),
    ]


def test_wrong_column_type_is_a_pipeline_bug_and_routes_nothing(lab_spec: SourceSpec) -> None:
    # A whole column as strings (e.g. the cast step skipped): no row is to blame, so the gate raises.
    frame = lab_frame().with_columns(pl.col("result_ts").dt.strftime("%Y-%m-%dT%H:%M:%S"))
    with pytest.raises(GateSchemaError) as raised:
        evaluate(frame, lab_spec)
    message = str(raised.value)
    assert message.startswith(
        "source lab_results: the batch does not fit the silver schema, a pipeline bug and not bad rows; "
        "nothing was routed: result_ts: dtype('Datetime(time_unit='us', time_zone='UTC')') (found String)"
    )
    assert "2026-03-01" not in message and "ZZQ" not in message
    # Raised outside pandera's exception, whose message quotes failing values.
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_missing_lineage_column_raises(lab_spec: SourceSpec) -> None:
    with pytest.raises(GateSchemaError, match=r"_batch: column_in_dataframe"):
        evaluate(lab_frame().drop("_batch"), lab_spec)


def slices(*rows: tuple[str, str, int, int]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["_batch", "_facility", "rows", "rejected"], orient="row")


def test_facility_gate_holds_each_facility_on_its_own(lab_spec: SourceSpec) -> None:
    """5% and 20 rows by default: small slices count as 20 rows, so one bad row passes and two do not."""
    quality = lab_spec.quality.model_copy(
        update={
            "facilities": {"F9": lab_spec.quality.facility("F9").model_copy(update={"max_error_rate": 0.3})}
        }
    )
    spec = lab_spec.model_copy(update={"quality": quality})
    decided = facility_gate(
        slices(
            ("b1", "F1", 40, 10),  # 25%: held
            ("b1", "F2", 40, 0),
            ("b1", "F3", 4, 1),  # 1 / max(4, 20) = 5%: at the threshold, passes
            ("b1", "F4", 4, 2),  # 2 / 20 = 10%: held
            ("b2", "F1", 100, 5),  # the same facility's next batch, 5%: passes on its own
            ("b2", "F9", 40, 10),  # 25% under its own 30%
        ),
        spec,
    )
    assert decided.sort("_batch", "_facility").select("_batch", "_facility", "error_rate", "held").rows() == [
        ("b1", "F1", 0.25, True),
        ("b1", "F2", 0.0, False),
        ("b1", "F3", 0.05, False),
        ("b1", "F4", 0.1, True),
        ("b2", "F1", 0.05, False),
        ("b2", "F9", 0.25, False),
    ]


def test_metadata_version_changes_with_what_the_gate_depends_on(lab_spec: SourceSpec) -> None:
    version = metadata_version(lab_spec)
    assert metadata_version(lab_spec.model_copy()) == version
    looser = lab_spec.quality.model_copy(update={"max_error_rate": 0.2})
    assert metadata_version(lab_spec.model_copy(update={"quality": looser})) != version
    assert metadata_version(lab_spec.model_copy(update={"checks": lab_spec.checks[:1]})) != version
    assert metadata_version(lab_spec.model_copy(update={"description": "other words"})) == version


def test_freshness_sla_from_metadata(sources: dict[str, SourceSpec]) -> None:
    assert {name: freshness_sla(spec) for name, spec in sorted(sources.items())} == {
        "adt_events": (60, "error"),
        "bed_census": (30, "error"),
        "lab_results": (120, "error"),
        "patient_documents": (1440, "error"),
    }
