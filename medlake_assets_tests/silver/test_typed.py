"""apply_types on bronze-shaped frames of the four sources, its failures, and the metadata driving it."""

from __future__ import annotations

import random
import string
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import yaml

from medlake_assets.silver import typed
from medlake_assets.silver.casts import TIMESTAMP
from medlake_assets.silver.cleaning import DEFAULT_NULL_TOKENS
from medlake_assets.silver.transforms import FAILURE_SCHEMA, apply_types, typed_schema
from medlake_assets.silver.typed import null_tokens_for
from medlake_assets.spec import SourceSpec, SpecError, load_sources

LINEAGE = ["_archive", "_member", "_record", "_facility", "_landing_day", "_ingested_at", "_batch"]
INGESTED = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def bronze(spec: SourceSpec, rows: list[dict[str, str | None]], member: str = "m1.csv") -> pl.DataFrame:
    """A bronze-shaped frame: declared columns as strings (absent keys are null), then lineage columns."""
    data: dict[str, list] = {name: [row.get(name) for row in rows] for name in spec.column_names()}
    count = len(rows)
    data |= {
        "_archive": [f"landing/{spec.name}/2026/11/26/F0001/a.zip"] * count,
        "_member": [member] * count,
        "_record": list(range(1, count + 1)),
        "_facility": ["F0001"] * count,
        "_landing_day": [date(2026, 11, 26)] * count,
        "_ingested_at": [INGESTED] * count,
        "_batch": ["b1"] * count,
    }
    schema = {name: pl.String for name in spec.column_names()} | {
        "_record": pl.Int64,
        "_landing_day": pl.Date,
        "_ingested_at": pl.Datetime("us", "UTC"),
    }
    return pl.DataFrame(data, schema_overrides=schema)


def failures_of(batch) -> list[tuple[int, int, str, str]]:
    return [
        (row["_row"], row["_record"], row["column"], row["rule"])
        for row in batch.failures.iter_rows(named=True)
    ]


def lab_rows(rng: random.Random, count: int) -> list[dict[str, str | None]]:
    """Realistic lab results as the CSV sends them (values like the generator's)."""
    start = datetime(2026, 11, 26, 2, 0)
    tests = [("2345-7", "Glucose", "mg/dL", 70, 99), ("2160-0", "Creatinine", "mg/dL", 0.6, 1.3)]
    rows = []
    for index in range(count):
        code, name, unit, low, high = rng.choice(tests)
        rows.append(
            {
                "facility_id": "F0001",
                "patient_id": f"0001{rng.randrange(200_000):06d}",
                "order_id": f"ORD00001{index:07d}",
                "test_code": code,
                "test_name": name,
                "value": f"{rng.uniform(low, high):.1f}",
                "unit": unit,
                "reference_range": f"{low}-{high}",
                "abnormal_flag": rng.choice(["N", "H", "L", None]),
                "result_status": rng.choice("PFC"),
                "result_ts": (start + timedelta(minutes=index)).isoformat(timespec="seconds"),
            }
        )
    return rows


def test_lab_results(sources):
    spec = sources["lab_results"]
    rows = lab_rows(random.Random(7), 50)
    rows[3] |= {"result_ts": "2026-11-26T25:10:00", "result_status": " f "}
    rows[4] |= {
        "value": "N/A",
        "unit": " NULL ",
        "abnormal_flag": " h ",
        "test_name": "  Glucose \t fasting ",
    }
    rows[5] |= {"result_ts": "2026-11-26 08:15:00.5+02:00"}
    frame = bronze(spec, rows)
    batch = apply_types(frame, spec)

    assert batch.frame.columns == [*spec.column_names(), "result_ts_offset", *LINEAGE]
    assert batch.frame.schema["result_ts"] == TIMESTAMP
    assert batch.frame.height == 50
    assert batch.frame.select(LINEAGE).equals(frame.select(LINEAGE))
    assert failures_of(batch) == [(3, 4, "result_ts", "cast.timestamp")]
    row = batch.frame.row(3, named=True)
    assert (row["result_ts"], row["result_status"]) == (None, "F")
    row = batch.frame.row(4, named=True)
    assert (row["value"], row["unit"], row["abnormal_flag"], row["test_name"]) == (
        None,
        None,
        "H",
        "Glucose fasting",
    )
    assert batch.frame.row(5, named=True)["result_ts"] == utc(2026, 11, 26, 6, 15, 0, 500_000)
    assert batch.frame.row(5, named=True)["result_ts_offset"] == "+0200"
    assert batch.frame.row(0, named=True)["result_ts"] == utc(2026, 11, 26, 2, 0)
    assert batch.frame["result_ts_offset"].null_count() == 49
    assert batch.frame["value"][0] == rows[0]["value"]  # strings stay as received


def test_adt_events(sources):
    spec = sources["adt_events"]
    base = {
        "message_control_id": "MSG0001",
        "message_type": "ADT",
        "trigger_event": "A01",
        "message_ts": "20261126081530",
        "sending_facility": "F0001",
        "patient_id": "0001000042",
        "family_name": "Lee",
        "given_name": "Anna",
        "birth_date": "19800512",
        "sex": "F",
        "patient_class": "I",
        "point_of_care": "ICU",
        "room": "ICU-101",
        "bed": "A",
        "visit_number": "V1",
        "admit_ts": "202611260700",
    }
    rows = [
        base,
        base
        | {
            "message_ts": "20261126081530.123+0200",
            "sex": "A",
            "birth_date": "1980",
            "trigger_event": " a08",
        },
        base | {"sex": "UN", "admit_ts": "2026113", "family_name": "van  der\tBerg", "given_name": '""'},
        base | {"sex": "male", "birth_date": "19801332", "patient_class": " e "},
        base | {"sex": "X", "discharge_ts": "202611261200-0500"},
        base | {"sex": "N/A", "message_ts": "2026"},
    ]
    batch = apply_types(bronze(spec, rows, "m1.hl7"), spec)

    assert failures_of(batch) == [
        (2, 3, "admit_ts", "cast.timestamp"),
        (3, 4, "birth_date", "cast.date"),
        (4, 5, "sex", "transform.normalize_sex"),
    ]
    frame = batch.frame
    assert frame["sex"].to_list() == ["F", "O", "O", "M", None, None]
    assert frame["message_ts"].to_list() == [
        utc(2026, 11, 26, 8, 15, 30),
        utc(2026, 11, 26, 6, 15, 30, 123_000),
        utc(2026, 11, 26, 8, 15, 30),
        utc(2026, 11, 26, 8, 15, 30),
        utc(2026, 11, 26, 8, 15, 30),
        utc(2026, 1, 1),
    ]
    assert frame["message_ts_offset"].to_list() == [None, "+0200", None, None, None, None]
    assert frame["message_ts_precision"].to_list() == [
        "second",
        "fraction",
        "second",
        "second",
        "second",
        "year",
    ]
    assert (
        frame["birth_date"].to_list()
        == [date(1980, 5, 12), date(1980, 1, 1), date(1980, 5, 12), None] + [date(1980, 5, 12)] * 2
    )
    assert frame["birth_date_precision"].to_list() == ["day", "year", "day", None, "day", "day"]
    assert frame["trigger_event"][1] == "A08" and frame["patient_class"][3] == "E"
    assert (frame["family_name"][2], frame["given_name"][2]) == ("van der Berg", None)
    assert frame.row(4, named=True)["discharge_ts"] == utc(2026, 11, 26, 17, 0)
    assert frame.row(4, named=True)["discharge_ts_offset"] == "-0500"
    assert frame.row(4, named=True)["discharge_ts_precision"] == "minute"
    assert frame.row(0, named=True)["discharge_ts_precision"] is None


def test_bed_census(sources):
    spec = sources["bed_census"]
    rng = random.Random(11)
    rows = [
        {
            "facility_id": "F0002",
            "unit": "ICU",
            "bed_id": f"ICU-{100 + index // 2}{'AB'[index % 2]}",
            "status": rng.choice(["occupied", "available", "cleaning", "blocked"]),
            "patient_id": f"0002{rng.randrange(200_000):06d}",
            "updated_at": f"2026-11-26T08:{index:02d}:00",
        }
        for index in range(20)
    ]
    rows[1] |= {"status": " Occupied ", "unit": " Cardio   Step-Down ", "patient_id": "NULL"}
    rows[2] |= {"updated_at": "2026-11-26 08:02"}
    rows[3] |= {"updated_at": "26.11.2026 08:03", "patient_id": '""'}
    batch = apply_types(bronze(spec, rows), spec)

    assert failures_of(batch) == [(3, 4, "updated_at", "cast.timestamp")]
    frame = batch.frame
    assert (frame["status"][1], frame["unit"][1], frame["patient_id"][1]) == (
        "occupied",
        "Cardio Step-Down",
        None,
    )
    # bed_census declares its own null tokens ("", NULL, N/A); the HL7 '""' is a value there.
    assert frame["patient_id"][3] == '""'
    assert frame["updated_at"][:3].to_list() == [
        utc(2026, 11, 26, 8, 0),
        utc(2026, 11, 26, 8, 1),
        utc(2026, 11, 26, 8, 2),
    ]
    assert frame["updated_at"].null_count() == 1


def test_patient_documents(sources):
    spec = sources["patient_documents"]
    base = {
        "document_id": "2.16.840.1.113883.19.5^DOC1",
        "effective_ts": "20261126081530+0100",
        "document_code": "34133-9",
        "patient_id": "0001000042",
        "family_name": "Lee",
        "given_name": "Anna",
        "birth_date": "19800512",
        "gender": "F",
        "postal_code": "12345",
    }
    rows = [
        base,
        base | {"gender": "UN", "postal_code": " 12345-6789 ", "effective_ts": "20261126"},
        base | {"gender": "M", "effective_ts": "2026-11-26T08:15:30Z", "birth_date": "198005"},
        base | {"gender": "unknown", "given_name": "N/A"},
    ]
    batch = apply_types(bronze(spec, rows, "doc1.xml"), spec)

    assert failures_of(batch) == [(2, 3, "effective_ts", "cast.timestamp")]
    frame = batch.frame
    assert frame["gender"].to_list() == ["F", "O", "M", "U"]
    assert frame["effective_ts"].to_list() == [
        utc(2026, 11, 26, 7, 15, 30),
        utc(2026, 11, 26),
        None,
        utc(2026, 11, 26, 7, 15, 30),
    ]
    assert frame["effective_ts_offset"].to_list() == ["+0100", None, None, "+0100"]
    assert frame["effective_ts_precision"].to_list() == ["second", "day", None, "second"]
    assert frame["birth_date"].to_list() == [
        date(1980, 5, 12),
        date(1980, 5, 12),
        date(1980, 5, 1),
        date(1980, 5, 12),
    ]
    assert frame["postal_code"][1] == "12345-6789" and frame["given_name"][3] is None
    assert typed_schema(spec) == {
        "document_id": pl.String,
        "effective_ts": TIMESTAMP,
        "effective_ts_offset": pl.String,
        "effective_ts_precision": pl.String,
        "document_code": pl.String,
        "patient_id": pl.String,
        "family_name": pl.String,
        "given_name": pl.String,
        "birth_date": pl.Date,
        "birth_date_precision": pl.String,
        "gender": pl.String,
        "postal_code": pl.String,
    }


def test_repeated_values_are_typed_once_each_with_the_same_result(sources, monkeypatch):
    """A costly column (a parse, a regex) whose values repeat is typed once per distinct value and joined
    back: every typed value, companion and failure (its row and rule) is what typing each row gives."""
    rng = random.Random(5)
    stamps = ["2026-11-26T08:15:00", "2026-11-26 08:15:00.5+02:00", "2026-11-26T25:10:00", None, " NULL "]
    names = ["Glucose", "  Glucose \t fasting ", "N/A", None, "Creatinine"]
    rows = lab_rows(rng, 600)
    for row in rows:
        row |= {"result_ts": rng.choice(stamps), "test_name": rng.choice(names)}
    frame = bronze(sources["lab_results"], rows)
    typing_by_value = typed._typed_by_value
    chosen: list[str] = []  # the columns typed by distinct value in the last call

    def recorded(frame: pl.DataFrame, name: str, plan) -> pl.DataFrame | None:
        typed_values = typing_by_value(frame, name, plan)
        if typed_values is not None:
            chosen.append(name)
        return typed_values

    monkeypatch.setattr(typed, "_typed_by_value", recorded)
    by_value = apply_types(frame, sources["lab_results"])
    # The costly columns only (a regex, a parse), not `trim`'s or `upper`'s, though those values repeat too.
    assert chosen == ["test_name", "result_ts"]
    chosen.clear()
    monkeypatch.setattr(typed, "MAX_DISTINCT_SHARE", -1.0)  # every column typed row by row
    by_row = apply_types(frame, sources["lab_results"])
    assert chosen == []

    assert by_value.frame.equals(by_row.frame, null_equal=True)
    assert by_value.failures.equals(by_row.failures, null_equal=True)
    bad = [index for index, row in enumerate(rows) if row["result_ts"] in ("2026-11-26T25:10:00", " NULL ")]
    assert bad and failures_of(by_value) == [
        (index, index + 1, "result_ts", "cast.timestamp") for index in bad
    ]
    fasting = [index for index, row in enumerate(rows) if row["test_name"] == names[1]]
    assert {by_value.frame["test_name"][index] for index in fasting} == {"Glucose fasting"}
    offsets = by_value.frame.filter(pl.col("result_ts_offset").is_not_null())
    assert set(offsets["result_ts"]) == {utc(2026, 11, 26, 6, 15, 0, 500_000)}


def test_failure_reasons_never_contain_the_value(sources):
    """Every typed or normalized cell of every source gets a random bad value; each yields one failure."""
    rng = random.Random(2026)
    for spec in sources.values():
        checked = [c.name for c in spec.columns if c.type != "string" or "normalize_sex" in c.transforms]
        rows = [
            {name: "Q" + "".join(rng.choices(string.ascii_letters + string.digits, k=12)) for name in checked}
            for _ in range(30)
        ]
        batch = apply_types(bronze(spec, rows), spec)
        assert batch.failures.height == 30 * len(checked), spec.name
        assert sorted(set(batch.failures["column"])) == sorted(checked)
        for failure in batch.failures.iter_rows(named=True):
            value = rows[failure["_row"]][failure["column"]]
            assert value not in failure["reason"] and value[1:7] not in failure["reason"]
            assert failure["reason"]
        assert all(batch.frame[name].null_count() == 30 for name in checked)


def test_failure_frame_schema_and_lineage():
    spec = SourceSpec.model_validate(
        {
            "name": "feed",
            "landing": {
                "key_pattern": r"^(?P<yyyy>\d{4})/(?P<mm>\d{2})/(?P<dd>\d{2})/(?P<facility>\w+)/.+$",
                "archives": ["none"],
            },
            "format": {"kind": "csv"},
            "columns": [
                {"name": "n", "source": "n", "type": "int"},
                {"name": "ok", "source": "ok", "type": "boolean"},
                {"name": "amount", "source": "amount", "type": "decimal", "format": "6,2"},
                {"name": "phone", "source": "phone", "transforms": ["digits_only"]},
                {"name": "label", "source": "label"},
            ],
        }
    )
    frame = pl.DataFrame(
        {
            "n": ["1", "x", None],
            "ok": ["yes", "no", "maybe"],
            "amount": ["1.10", "1.999", "7"],
            "phone": ["555-01", "-", None],
            "label": ["a", "b", None],
        }
    )
    batch = apply_types(frame, spec)
    assert batch.failures.schema == FAILURE_SCHEMA
    assert batch.failures.select("_row", "_archive", "column", "rule").rows() == [
        (1, None, "n", "cast.int"),
        (1, None, "amount", "cast.decimal"),
        (1, None, "phone", "transform.digits_only"),
        (2, None, "ok", "cast.boolean"),
    ]
    assert batch.failures["reason"].to_list() == [
        "not a 32-bit integer",
        "not a decimal with at most 4 integer and 2 fraction digits",
        "holds no digit",
        "not a boolean (true/false, t/f, yes/no, y/n, 1/0)",
    ]
    assert batch.frame.columns == ["n", "ok", "amount", "phone", "label"]
    assert batch.frame.rows() == [
        (1, True, Decimal("1.10"), "55501", "a"),
        (None, False, None, None, "b"),
        (None, None, Decimal("7.00"), None, None),
    ]
    empty = apply_types(frame.clear(), spec)
    assert empty.failures.schema == FAILURE_SCHEMA and empty.failures.height == 0
    assert empty.frame.schema == typed_schema(spec)


def test_missing_column_and_companion_clash(sources):
    spec = sources["lab_results"]
    with pytest.raises(
        ValueError, match=r"source lab_results: the frame lacks declared columns \['result_ts'\]"
    ):
        apply_types(bronze(spec, []).drop("result_ts"), spec)
    data = spec.model_dump()
    data["columns"].append({"name": "result_ts_offset", "source": "x"})
    clash = SourceSpec.model_validate(data)
    with pytest.raises(
        ValueError, match="column 'result_ts_offset' clashes with the companion column of 'result_ts'"
    ):
        typed_schema(clash)


def test_null_tokens_resolution(sources):
    lab = sources["lab_results"]
    adt = sources["adt_events"]
    column = next(c for c in lab.columns if c.name == "value")
    assert null_tokens_for(column, lab) == ("", "NULL", "N/A")  # the CSV format declares its own
    assert null_tokens_for(next(c for c in adt.columns if c.name == "sex"), adt) == DEFAULT_NULL_TOKENS
    override = column.model_copy(update={"null_tokens": ["?"]})
    assert null_tokens_for(override, lab) == ("?",)


# ----------------------------------------------------------------------------------------------- metadata

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


def write_feed(folder: Path, column: dict) -> Path:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    data["columns"][1] |= column
    path = folder / "feed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            {"transforms": ["trim", "trimm"]},
            "columns.1.transforms: Value error, unknown transforms ['trimm']; known:",
        ),
        ({"timezone": "Mars/Olympus"}, "columns.1.timezone: Value error, unknown time zone 'Mars/Olympus'"),
        ({"type": "date", "timezone": "UTC"}, "columns.1: Value error, timezone: only timestamp columns"),
        (
            {"type": "string", "format": "hl7"},
            "columns.1: Value error, format: type 'string' takes no format",
        ),
        ({"format": "YYYYMMDD"}, "columns.1: Value error, format: a timestamp format is 'hl7', 'iso' or"),
        ({"type": "decimal", "format": "10.2"}, "columns.1: Value error, format: a decimal format is"),
        (
            {"null_tokens": ["-"]},
            "columns.1: Value error, null_tokens: given, but `null_tokens` is not among",
        ),
    ],
)
def test_invalid_column_settings_name_file_and_field(tmp_path, column, message):
    path = write_feed(tmp_path, column)
    with pytest.raises(SpecError) as raised:
        load_sources(tmp_path)
    assert f"{path}: {message}" in str(raised.value)


def test_column_settings_load(tmp_path):
    write_feed(
        tmp_path,
        {
            "format": "%d/%m/%Y %H:%M",
            "timezone": "Europe/Berlin",
            "transforms": ["trim", "null_tokens"],
            "null_tokens": ["-"],
        },
    )
    spec = load_sources(tmp_path)["feed"]
    column = spec.columns[1]
    assert (column.format, column.timezone, column.transforms, column.null_tokens) == (
        "%d/%m/%Y %H:%M",
        "Europe/Berlin",
        ["trim", "null_tokens"],
        ["-"],
    )
    batch = apply_types(
        pl.DataFrame({"id": ["1", "2", "3"], "seen_at": [" 26/11/2026 08:15 ", " - ", "N/A"]}), spec
    )
    assert batch.frame["seen_at"].to_list() == [utc(2026, 11, 26, 7, 15), None, None]
    assert failures_of_simple(batch) == [(2, "seen_at", "cast.timestamp")]
    assert batch.failures["reason"][0] == (
        "not a timestamp in the format %d/%m/%Y %H:%M, or a local time that does not exist in Europe/Berlin"
    )


def failures_of_simple(batch) -> list[tuple[int, str, str]]:
    return batch.failures.select("_row", "column", "rule").rows()
