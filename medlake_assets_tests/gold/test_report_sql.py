"""Each shipped report's SQL over tiny hand-made tables (registered under the lake's names) gives the
hand-checked rows."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from medlake_assets.gold.run import query_report
from medlake_assets.gold.spec import load_report

REPORTS_DIR = Path(__file__).resolve().parents[2] / "metadata" / "reports"
AS_OF = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def lake_with(tables: dict[str, pl.DataFrame]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding each frame as `<namespace>.<table>`, like `serving.sql.connect`."""
    con = duckdb.connect()
    for name, frame in tables.items():
        namespace = name.split(".", 1)[0]
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {namespace}")
        con.register("frame", frame.to_arrow())
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM frame")
        con.unregister("frame")
    return con


def run(name: str, tables: dict[str, pl.DataFrame]) -> list[tuple]:
    report = load_report(REPORTS_DIR / f"{name}.sql")
    return [tuple(row.values()) for row in query_report(lake_with(tables), report, AS_OF).to_pylist()]


def columns(name: str, tables: dict[str, pl.DataFrame]) -> list[str]:
    report = load_report(REPORTS_DIR / f"{name}.sql")
    return query_report(lake_with(tables), report, AS_OF).column_names


BEDS = {
    "silver.bed_census": pl.DataFrame(
        {
            "facility_id": ["F1", "F1", "F1", "F1", "F1", "F1", "F2", "F2"],
            "unit": ["ICU", "ICU", "ICU", "ICU", "ICU", "ED", "ICU", "ICU"],
            "bed_id": ["B1", "B2", "B3", "B4", "B5", "E1", "B1", "B2"],
            "status": [
                "occupied",
                "occupied",
                "available",
                "cleaning",
                "occupied",
                "blocked",
                "occupied",
                "available",
            ],
            "updated_at": [
                ts("2026-11-20 08:00"),
                ts("2026-11-20 09:30"),
                ts("2026-11-20 07:00"),
                ts("2026-11-20 09:00"),
                ts("2026-11-20 10:00"),
                ts("2026-11-19 23:00"),
                ts("2026-11-20 05:00"),
                ts("2026-11-20 06:00"),
            ],
            # F1 B5 left the census: a tombstone is neither a bed nor the latest census time.
            "_deleted": [False, False, False, False, True, False, False, False],
        }
    )
}


def test_bed_availability():
    assert columns("bed_availability", BEDS) == [
        "facility_id",
        "unit",
        "beds",
        "occupied",
        "available",
        "cleaning",
        "blocked",
        "occupancy_rate",
        "as_of",
    ]
    assert run("bed_availability", BEDS) == [
        ("F1", "ED", 1, 0, 0, 0, 1, 0.0, ts("2026-11-20 09:30")),
        ("F1", "ICU", 4, 2, 1, 1, 0, 0.5, ts("2026-11-20 09:30")),
        ("F2", "ICU", 2, 1, 1, 0, 0, 0.5, ts("2026-11-20 06:00")),
    ]


def encounters_tables() -> dict[str, pl.DataFrame]:
    encounters = pl.DataFrame(
        {
            "facility": ["F1", "F1", "F1", "F2", "F1"],
            "visit_number": ["V1", "V2", "V3", "V4", "V5"],
            "status": ["discharged", "discharged", "admitted", "discharged", "discharged"],
            "admit_ts": [
                ts("2026-11-19 22:00"),
                ts("2026-11-20 08:00"),
                ts("2026-11-20 23:30"),
                ts("2026-11-20 10:00"),
                None,  # a discharge whose admission never reached the lake
            ],
            "discharge_ts": [
                ts("2026-11-20 10:00"),
                ts("2026-11-20 14:00"),
                None,
                ts("2026-11-21 01:00"),
                ts("2026-11-20 16:00"),
            ],
            "_deleted": [False] * 5,
        }
    )
    adt = pl.DataFrame(
        {
            "_facility": ["F1", "F1", "F1", "F2", "F1"],
            "message_control_id": ["M1", "M1", "M2", "M3", "M4"],  # M1 received twice
            "trigger_event": ["A02", "A02", "A02", "A02", "A08"],
            "message_ts": [
                ts("2026-11-20 11:00"),
                ts("2026-11-20 11:00"),
                ts("2026-11-21 00:30"),
                ts("2026-11-20 12:00"),
                ts("2026-11-20 12:00"),
            ],
        }
    )
    return {"silver.encounters": encounters, "silver.adt_events": adt}


def test_daily_admissions_discharges():
    # F1 11-20: discharges V1 (12 h), V2 (6 h) and V5 (no admit: counted, no stay) -> avg 9 h.
    assert run("daily_admissions_discharges", encounters_tables()) == [
        ("F1", date(2026, 11, 19), 1, 0, 0, None),
        ("F1", date(2026, 11, 20), 2, 3, 1, 9.0),
        ("F1", date(2026, 11, 21), 0, 0, 1, None),
        ("F2", date(2026, 11, 20), 1, 0, 1, None),
        ("F2", date(2026, 11, 21), 0, 1, 0, 15.0),
    ]


LABS = {
    "silver.lab_results": pl.DataFrame(
        {
            "facility_id": ["F1"] * 6 + ["F2"] * 2,
            "test_code": ["2345-7"] * 5 + ["718-7", "2345-7", "2345-7"],
            "test_name": ["Glucose"] * 5 + ["Hemoglobin", "Glucose", "Glucose"],
            "abnormal_flag": ["H", "N", None, "L", "HH", "N", "N", "A"],
            # the P result is preliminary (left out); the C one is a corrected final result.
            "result_status": ["F", "F", "F", "C", "P", "F", "F", "F"],
            "_deleted": [False, False, False, False, False, False, False, True],
        }
    )
}


def test_abnormal_lab_rates():
    assert run("abnormal_lab_rates", LABS) == [
        ("F1", "2345-7", "Glucose", 4, 2, 0.5),
        ("F1", "718-7", "Hemoglobin", 1, 0, 0.0),
        ("F2", "2345-7", "Glucose", 1, 0, 0.0),
    ]


def quarantine(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "_facility": [row[0] for row in rows],
            "rule": [row[1] for row in rows],
            "stage": ["silver"] * len(rows),
        },
        schema={"_facility": pl.String, "rule": pl.String, "stage": pl.String},
    )


def scorecard_tables() -> dict[str, pl.DataFrame]:
    files = pl.DataFrame(
        {
            "facility": ["F1", "F1", "F1", "F1", "F1", "F2", "F2", None],
            "source": [
                "lab_results",
                "lab_results",
                "lab_results",
                "adt_events",
                "adt_events",
                "lab_results",
                "lab_results",
                None,
            ],
            "status": [
                "loaded",
                "loaded",
                "quarantined",
                "pending",
                "pending",
                "loaded",
                "quarantined",
                "quarantined",
            ],
            "batch_id": ["b1", "b2", "b2", None, "a1", "b1", "b3", None],
            "records": [100, 50, None, None, None, 7, None, None],
            "rule": [
                None,
                None,
                "archive.corrupt",
                None,
                None,
                None,
                "archive.bad_password",
                "landing.no_source",
            ],
            "loaded_at": [
                datetime(2026, 11, 21, 4, 30),
                datetime(2026, 11, 21, 5, 45),
                None,
                None,
                None,
                datetime(2026, 11, 20, 6, 0),
                None,
                None,
            ],
            "updated_at": [
                datetime(2026, 11, 21, 4, 30),
                datetime(2026, 11, 21, 5, 45),
                datetime(2026, 11, 21, 5, 0),
                datetime(2026, 11, 21, 5, 0),
                datetime(2026, 11, 21, 5, 0),
                datetime(2026, 11, 20, 6, 0),
                datetime(2026, 11, 20, 7, 0),
                datetime(2026, 11, 21, 1, 0),
            ],
        }
    )
    # b2 (F1's second lab batch) is not in silver yet.
    processed = pl.DataFrame({"consumer": ["silver.lab_results"], "batch_id": ["b1"]})
    held = pl.DataFrame(
        {
            "source": ["lab_results", "lab_results", "lab_results"],
            "facility": ["F1", "F1", "F1"],
            "status": ["held", "released", "published"],
            "rows": [40, 10, 99],
            "rejected": [10, 4, 9],
            "held_at": [
                datetime(2026, 11, 21, 5, 0),
                datetime(2026, 11, 21, 3, 0),
                datetime(2026, 11, 20, 1, 0),
            ],
        }
    )
    freshness = pl.DataFrame(
        {
            "source": ["lab_results", "lab_results"],
            "facility": ["F1", "F2"],
            "usual_interval_minutes": [60.0, None],
            "limit_minutes": [90.0, 120.0],
            "stale": [False, True],
        }
    )
    return {
        "meta.files": files,
        "meta.processed": processed,
        "meta.held": held,
        "meta.freshness": freshness,
        "quarantine.adt_events": quarantine([]),
        "quarantine.bed_census": quarantine([("F3", "check.allowed:status")]),
        "quarantine.lab_results": quarantine(
            [
                ("F1", "check.regex:test_code"),
                ("F1", "cast.timestamp"),
                ("F1", "check.regex:test_code"),
                ("F2", "cast.timestamp"),
            ]
        ),
        "quarantine.patient_documents": quarantine([]),
    }


def test_data_quality_scorecard():
    assert columns("data_quality_scorecard", scorecard_tables()) == [
        "facility",
        "source",
        "archives",
        "archives_loaded",
        "archives_quarantined",
        "archives_pending",
        "archives_loading",
        "archives_awaiting_silver",
        "records",
        "quarantined_rows",
        "quarantined_by_rule",
        "held_rows",
        "held_batches",
        "held_since",
        "last_error_rule",
        "last_error_at",
        "last_loaded_at",
        "freshness_lag_minutes",
        "usual_interval_minutes",
        "freshness_limit_minutes",
        "stale",
        "as_of",
    ]
    # F3 quarantined rows without any archive in the ledger is impossible in a real lake: not reported.
    assert run("data_quality_scorecard", scorecard_tables()) == [
        # adt_events: one archive not yet in a batch, one in a batch still loading; no freshness row.
        (
            "F1",
            "adt_events",
            2,
            0,
            0,
            1,
            1,
            0,
            0,
            0,
            "{}",
            0,
            0,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            AS_OF,
        ),
        (
            "F1",
            "lab_results",
            3,
            2,
            1,
            0,
            0,
            1,  # the archive of b2, which silver has not taken in
            150,
            3,
            '{"cast.timestamp":1,"check.regex:test_code":2}',
            36,  # (40 - 10) held + (10 - 4) released and waiting; published rows are no longer held
            2,
            ts("2026-11-21 03:00"),
            "archive.corrupt",
            ts("2026-11-21 05:00"),
            ts("2026-11-21 05:45"),
            15.0,
            60.0,
            90.0,
            False,
            AS_OF,
        ),
        (
            "F2",
            "lab_results",
            2,
            1,
            1,
            0,
            0,
            0,
            7,
            1,
            '{"cast.timestamp":1}',
            0,
            0,
            None,
            "archive.bad_password",
            ts("2026-11-20 07:00"),
            ts("2026-11-20 06:00"),
            1440.0,
            None,
            120.0,
            True,
            AS_OF,
        ),
    ]


def test_as_of_must_be_timezone_aware():
    report = load_report(REPORTS_DIR / "bed_availability.sql")
    with pytest.raises(ValueError, match="as_of must be timezone-aware"):
        query_report(lake_with(BEDS), report, datetime(2026, 11, 21))
