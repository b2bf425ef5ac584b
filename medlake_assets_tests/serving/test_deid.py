"""`silver_deid.*`: keyed tokens, per-patient date shifts and dropped free text, over real silver tables.

The lake is written with the real silver schemas of `metadata/sources/` (and `silver.encounters` folded by
the real `derive_encounters`), filled with seeded synthetic patients; the views are read through
`sql.connect`, the same connection `medlake sql` and serve-sql use.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pytest

from medlake_assets.lake import Lake
from medlake_assets.serving.deid import (
    DEID_KEY_ENV,
    MAX_SHIFT_DAYS,
    DeidKeyError,
    deid_key,
    register_deid_views,
    shift_days,
    table_treatments,
    token,
    view_sql,
)
from medlake_assets.serving.pgwire import lock_down
from medlake_assets.serving.read import read
from medlake_assets.serving.sql import connect, relations
from medlake_assets.silver.encounters import derive_encounters
from medlake_assets.silver.encounters_load import ENCOUNTERS, PARTITION_BY
from medlake_assets.silver.load import silver_schema
from medlake_assets.silver.tables import ensure_table
from medlake_assets_tests.lake_helpers import local_settings

KEY = "k" * 16 + "synthetic-test-key-0123456789"
OTHER_KEY = "another-synthetic-test-key-abcdefghij"
TABLES = ["adt_events", "bed_census", "encounters", "lab_results", "patient_documents"]
FAMILY = ["Lindqvist", "Okonkwo", "Moreau", "Castellanos", "Whitfield", "Nakamura"]
GIVEN = ["Henrietta", "Bartholomew", "Giselle", "Leopold", "Marisol", "Ignatius"]
BASE = datetime(2026, 11, 19, 6, 0, tzinfo=UTC)


def _filled(schema: pa.Schema, rows: list[dict]) -> pa.Table:
    """Rows with every other column of `schema` filled with a harmless value of its type."""
    defaults = {
        pa.types.is_boolean: lambda name, i: False,
        pa.types.is_integer: lambda name, i: i,
        pa.types.is_date: lambda name, i: date(2026, 11, 20),
        pa.types.is_timestamp: lambda name, i: BASE,
    }
    out = []
    for i, row in enumerate(rows):
        full = {}
        for field in schema:
            if field.name in row:
                full[field.name] = row[field.name]
                continue
            fill = next((make for test, make in defaults.items() if test(field.type)), None)
            full[field.name] = fill(field.name, i) if fill else f"{field.name}-{i}"
        out.append(full)
    return pa.Table.from_pylist(out, schema=schema)


def _patients(rng: random.Random, count: int) -> list[dict]:
    return [
        {
            "patient_id": f"{1 + n % 3:04d}{rng.randrange(200_000):06d}",
            "family_name": rng.choice(FAMILY),
            "given_name": rng.choice(GIVEN),
            "birth_date": date(1930, 1, 1) + timedelta(days=rng.randrange(33_000)),
            "postal_code": f"9{rng.randrange(10_000):04d}",
        }
        for n in range(count)
    ]


def _write(lake: Lake, name: str, table: pa.Table, partition_by: list[str]) -> None:
    ensure_table(lake.catalog, f"silver.{name}", table.schema, partition_by).append(table)


def build_lake(home: Path) -> tuple[Lake, list[dict]]:
    """Seeded silver tables for 12 patients: visits with known stays, labs, documents, beds."""
    rng = random.Random(5)
    lake = Lake(local_settings(home))
    specs = lake.sources
    patients = _patients(rng, 12)
    events = []
    for n, patient in enumerate(patients):
        admitted = BASE + timedelta(minutes=rng.randrange(600))
        stay = timedelta(hours=rng.randrange(2, 90), minutes=rng.randrange(60))
        visit = f"V{n:04d}{rng.randrange(10**8):08d}"
        person = {key: patient[key] for key in ("patient_id", "family_name", "given_name", "birth_date")}
        for number, (trigger, at) in enumerate([("A01", admitted), ("A03", admitted + stay)]):
            events.append(
                {
                    **person,
                    "message_control_id": f"MSG{n:03d}{number}",
                    "trigger_event": trigger,
                    "message_ts": at,
                    "visit_number": visit,
                    "patient_class": "I",
                    "admit_ts": admitted,
                    "discharge_ts": at if trigger == "A03" else None,
                    "_facility": f"F{1 + n % 3:04d}",
                    "_ingested_at": BASE + timedelta(days=1),
                }
            )
    adt = _filled(silver_schema(specs["adt_events"]), events)
    _write(lake, "adt_events", adt, specs["adt_events"].write.partition_by)
    encounters = derive_encounters(pl.from_arrow(adt)).with_columns(pl.lit(False).alias("_deleted"))
    ensure_table(lake.catalog, ENCOUNTERS, encounters.to_arrow().schema, PARTITION_BY).append(
        encounters.to_arrow()
    )
    labs = [
        {
            "patient_id": patient["patient_id"],
            "order_id": f"ORD{n:03d}{test}",
            "test_code": "718-7",
            "result_ts": BASE + timedelta(hours=rng.randrange(48)),
        }
        for n, patient in enumerate(patients)
        for test in range(3)
    ]
    _write(lake, "lab_results", _filled(silver_schema(specs["lab_results"]), labs), [])
    documents = []
    for n, patient in enumerate(patients):
        effective = BASE - timedelta(days=rng.randrange(30))
        documents.append(
            {**patient, "document_id": f"DOC{n:03d}", "effective_ts": effective, "_valid_from": effective}
            | {"_valid_to": None, "_is_current": True}
        )
    _write(lake, "patient_documents", _filled(silver_schema(specs["patient_documents"]), documents), [])
    beds = [
        {"bed_id": f"B{n:02d}", "patient_id": patient["patient_id"], "updated_at": BASE + timedelta(hours=n)}
        for n, patient in enumerate(patients)
    ] + [{"bed_id": f"FREE{n}", "patient_id": None, "updated_at": BASE} for n in range(2)]
    _write(lake, "bed_census", _filled(silver_schema(specs["bed_census"]), beds), [])
    return lake, patients


@pytest.fixture(scope="module")
def lake_and_patients(tmp_path_factory):
    return build_lake(tmp_path_factory.mktemp("deid") / "home")


@pytest.fixture(scope="module")
def session(lake_and_patients):
    """One `connect` with the key set, shared by the tests that only read (connecting takes a while)."""
    lake, patients = lake_and_patients
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(DEID_KEY_ENV, KEY)
        return connect(lake), lake, patients


@pytest.fixture
def deid(session, monkeypatch):
    monkeypatch.setenv(DEID_KEY_ENV, KEY)
    return session


def _rows(con: duckdb.DuckDBPyConnection, relation: str) -> list[dict]:
    result = con.sql(f"SELECT * FROM {relation}")
    return [dict(zip(result.columns, row, strict=True)) for row in result.fetchall()]


# Per table: a column that identifies a row in both the silver table and its deid view, and whether the
# view shows it as a token.
ROW_KEY = {
    "adt_events": ("message_control_id", True),
    "bed_census": ("bed_id", False),
    "encounters": ("visit_number", True),
    "lab_results": ("order_id", True),
    "patient_documents": ("document_id", True),
}


def _pairs(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[dict, dict]]:
    """(silver row, deid row) pairs of a table, matched on its row key (through its token if tokenized)."""
    key, tokenized = ROW_KEY[table]
    raw = _rows(con, f"silver.{table}")
    deid_rows = _rows(con, f"silver_deid.{table}")
    by_key = {row[key]: row for row in deid_rows}
    assert len(by_key) == len(raw) == len(deid_rows)
    return [(row, by_key[token(KEY.encode(), row[key]) if tokenized else row[key]]) for row in raw]


def test_every_silver_table_gets_a_view_with_free_text_and_lineage_gone(deid):
    con, _, _ = deid
    assert [name for name in relations(con) if name.startswith("silver_deid.")] == [
        f"silver_deid.{table}" for table in TABLES
    ]
    columns = {table: con.sql(f"SELECT * FROM silver_deid.{table} LIMIT 0").columns for table in TABLES}
    for table, names in columns.items():
        for gone in ["family_name", "given_name", "postal_code", "_archive", "_member", "_record", "_batch"]:
            assert gone not in names, (table, gone)
        assert {"_landing_day", "_ingested_at"}.isdisjoint(names), table
        assert "patient_id" in names, table
    # What stays, as metadata/sources/*.yaml declares it: clinical content, the facility, tokens, shifted
    # dates and their precision (not their UTC offset); no charset, room or bed, no bed census time.
    assert columns == {
        "adt_events": [
            *("message_control_id", "message_type", "trigger_event", "message_ts", "message_ts_precision"),
            *("sending_facility", "patient_id", "birth_date", "birth_date_precision", "sex", "patient_class"),
            *("point_of_care", "visit_number", "admit_ts", "admit_ts_precision", "discharge_ts"),
            *("discharge_ts_precision", "_facility"),
        ],
        "bed_census": ["facility_id", "unit", "bed_id", "status", "patient_id", "_facility", "_deleted"],
        "encounters": [
            *(
                "facility",
                "visit_number",
                "patient_id",
                "status",
                "patient_class",
                "point_of_care",
                "admit_ts",
            ),
            *("discharge_ts", "last_event_ts", "event_count", "_facility", "_deleted"),
        ],
        "lab_results": [
            *("facility_id", "patient_id", "order_id", "test_code", "test_name", "value", "unit"),
            *("reference_range", "abnormal_flag", "result_status", "result_ts", "_facility", "_deleted"),
        ],
        "patient_documents": [
            *("document_id", "effective_ts", "effective_ts_precision", "document_code", "patient_id"),
            *("birth_date", "birth_date_precision", "gender", "_facility", "_deleted", "_valid_from"),
            *("_valid_to", "_is_current"),
        ],
    }


def test_tokens_are_the_keyed_hmac_stable_across_tables_and_connections(deid, lake_and_patients):
    con, lake, patients = deid
    key = KEY.encode()
    expected = {token(key, patient["patient_id"]) for patient in patients}
    assert len(expected) == len(patients)
    for table in TABLES:
        tokens = {row[0] for row in con.sql(f"SELECT patient_id FROM silver_deid.{table}").fetchall()}
        assert tokens - {None} <= expected, table
        assert len(tokens - {None}) == len(patients), table
    # A join on the token works like a join on the identifier.
    joined = con.sql(
        "SELECT count(*) FROM silver_deid.lab_results l JOIN silver_deid.encounters e USING (patient_id)"
    ).fetchone()
    raw_joined = con.sql(
        "SELECT count(*) FROM silver.lab_results l JOIN silver.encounters e USING (patient_id)"
    ).fetchone()
    assert joined == raw_joined == (36,)
    again = connect(lake)  # another session, same key: the same tokens
    assert sorted(again.sql("SELECT patient_id FROM silver_deid.encounters").fetchall()) == sorted(
        con.sql("SELECT patient_id FROM silver_deid.encounters").fetchall()
    )


def test_another_key_gives_other_tokens_and_offsets(deid, monkeypatch):
    con, lake, patients = deid
    monkeypatch.setenv(DEID_KEY_ENV, OTHER_KEY)
    other = connect(lake)
    query = "SELECT patient_id, admit_ts FROM silver_deid.encounters ORDER BY event_count, facility, admit_ts"
    ours = set(con.sql("SELECT patient_id FROM silver_deid.encounters").fetchall())
    theirs = set(other.sql("SELECT patient_id FROM silver_deid.encounters").fetchall())
    assert ours.isdisjoint(theirs)
    offsets = [
        (shift_days(KEY.encode(), p["patient_id"]), shift_days(OTHER_KEY.encode(), p["patient_id"]))
        for p in patients
    ]
    assert sum(a != b for a, b in offsets) >= len(patients) - 1
    assert other.sql(query).fetchall() != con.sql(query).fetchall()


def test_no_raw_identifier_value_appears_in_any_view(deid):
    con, lake, _ = deid
    raw_values: set[str] = set()
    for table, treatments in table_treatments(lake.sources).items():
        pii = {
            column.name
            for column in lake.sources.get(table, lake.sources["adt_events"]).columns
            if column.pii and column.name in treatments
        }
        present = set(con.sql(f"SELECT * FROM silver.{table} LIMIT 0").columns)
        for name in pii & present:
            raw_values |= {
                str(value) for (value,) in con.sql(f"SELECT DISTINCT {name} FROM silver.{table}").fetchall()
            }
    raw_values.discard("None")
    assert len(raw_values) >= 40  # ids, visits, names, birth dates, postal codes
    long_values = [value for value in raw_values if len(value) >= 8]
    for table in TABLES:
        for row in _rows(con, f"silver_deid.{table}"):
            for column, value in row.items():
                text = str(value)
                assert text not in raw_values, (table, column)
                assert not any(raw in text for raw in long_values), (table, column)


def test_dates_shift_by_one_offset_per_patient_across_tables(deid):
    con, _, patients = deid
    offsets: dict[str, set[timedelta]] = {}
    for table in TABLES:
        for raw, shifted in _pairs(con, table):
            for column, value in raw.items():
                if column not in shifted or not isinstance(value, date):
                    continue
                if raw["patient_id"] is None:
                    assert shifted[column] is None, (table, column)  # no patient, no offset: no date
                else:
                    offsets.setdefault(raw["patient_id"], set()).add(shifted[column] - value)
    assert set(offsets) == {patient["patient_id"] for patient in patients}
    for patient_id, moved in offsets.items():
        assert moved == {timedelta(days=shift_days(KEY.encode(), patient_id))}, patient_id
        (days,) = {delta.days for delta in moved}
        assert 1 <= abs(days) <= MAX_SHIFT_DAYS, (patient_id, days)  # never 0: a shift always moves the date
    shifts = {delta.days for moved in offsets.values() for delta in moved}
    assert len(shifts) > 1, "patients share one offset"
    assert min(shifts) < 0 < max(shifts), "dates move both ways, so the direction tells nothing"


def test_intervals_survive(deid):
    con, _, _ = deid
    stay = "epoch(discharge_ts) - epoch(admit_ts)"
    age = "datediff('day', birth_date, CAST(admit_ts AS DATE))"
    raw = con.sql(f"SELECT {stay}, {age} FROM silver.adt_events WHERE trigger_event = 'A03' ORDER BY ALL")
    shifted = con.sql(
        f"SELECT {stay}, {age} FROM silver_deid.adt_events WHERE trigger_event = 'A03' ORDER BY ALL"
    )
    assert raw.fetchall() == shifted.fetchall()
    los = "SELECT sum(epoch(discharge_ts) - epoch(admit_ts)), count(*) FROM {}.encounters"
    assert con.sql(los.format("silver")).fetchone() == con.sql(los.format("silver_deid")).fetchone()
    # Across tables too: a lab taken during a stay is still during the (shifted) stay.
    during = (
        "SELECT count(*) FROM {0}.lab_results l JOIN {0}.encounters e USING (patient_id) "
        "WHERE l.result_ts BETWEEN e.admit_ts AND e.discharge_ts"
    )
    assert con.sql(during.format("silver")).fetchone() == con.sql(during.format("silver_deid")).fetchone()


def test_the_key_never_reaches_sql_and_cursors_of_the_locked_endpoint_work(deid):
    _, lake, _ = deid
    con = connect(lake)
    texts = con.sql(
        "SELECT sql FROM duckdb_views() UNION ALL SELECT CAST(value AS VARCHAR) FROM duckdb_settings()"
    )
    assert not any(KEY in (text or "") for (text,) in texts.fetchall())
    lock_down(con, lake)  # what serve-sql does before it hands each client a cursor
    cursor = con.cursor()
    assert cursor.execute("SELECT count(*) FROM silver_deid.lab_results").fetchone() == (36,)


def test_without_the_key_there_are_no_views_and_building_them_is_refused(lake_and_patients, monkeypatch):
    lake, _ = lake_and_patients
    monkeypatch.delenv(DEID_KEY_ENV, raising=False)
    con = connect(lake)
    assert not [name for name in relations(con) if name.startswith("silver_deid.")]
    with pytest.raises(DeidKeyError, match=f"need the secret {DEID_KEY_ENV}, which is not set"):
        register_deid_views(con, lake.sources)
    monkeypatch.setenv(DEID_KEY_ENV, "short")
    with pytest.raises(DeidKeyError, match="is 5 characters long; it needs at least 32") as error:
        connect(lake)
    assert "short" not in str(error.value)
    with pytest.raises(DeidKeyError):
        deid_key({})


def test_read_api_points_at_duckdb_for_deid_views(lake_and_patients):
    lake, _ = lake_and_patients
    with pytest.raises(ValueError, match=r"silver_deid.lab_results is a DuckDB view.*connect\(lake\)"):
        read("silver_deid.lab_results", lake=lake)


def test_undeclared_columns_are_dropped_and_dates_without_a_patient_too():
    sql = view_sql(
        "feed",
        [("code", "VARCHAR"), ("secret_note", "VARCHAR"), ("seen_at", "TIMESTAMP WITH TIME ZONE")],
        {"code": "keep", "seen_at": "shift"},
    )
    assert sql == 'CREATE OR REPLACE VIEW silver_deid."feed" AS SELECT "code" FROM silver."feed"'


def test_a_date_is_never_kept_real_even_if_a_treatment_says_keep():
    sql = view_sql(
        "feed",
        [("patient_id", "VARCHAR"), ("seen_on", "DATE"), ("seen_at", "TIMESTAMP WITH TIME ZONE")],
        {"patient_id": "token", "seen_on": "keep", "seen_at": "shift"},
    )
    assert '"seen_on"' not in sql
    assert '"seen_at" + to_seconds(__shift_days * 86400) AS "seen_at"' in sql


def test_treatments_come_from_the_metadata(sources):
    treatments = table_treatments(sources)
    adt = treatments["adt_events"]
    assert {
        name: adt[name] for name in ("message_control_id", "visit_number", "patient_id")
    } == dict.fromkeys(("message_control_id", "visit_number", "patient_id"), "token")
    assert (
        adt["message_ts"] == adt["message_ts_precision"] == "shift" or adt["message_ts_precision"] == "keep"
    )
    assert adt["message_ts_offset"] == "drop"  # daylight saving time in the offset tells the real season
    assert {adt["charset"], adt["room"], adt["bed"], adt["family_name"]} == {"drop"}
    assert treatments["lab_results"]["order_id"] == "token"
    assert treatments["patient_documents"]["document_id"] == "token"
    assert treatments["bed_census"]["updated_at"] == "drop"
    encounters = treatments["encounters"]
    assert (encounters["last_event_ts"], encounters["room"], encounters["visit_number"]) == (
        "shift",
        "drop",
        "token",
    )
    # A column added to a source without `deid` is dropped.
    spec = sources["lab_results"]
    added = spec.model_copy(
        update={"columns": [*spec.columns, spec.columns[0].model_copy(update={"name": "new", "deid": None})]}
    )
    assert table_treatments({"lab_results": added})["lab_results"]["new"] == "drop"
