"""`meta.freshness` over a hand-made ledger: each facility's usual cadence learned from its arrivals, its
lag, its limit and whether it is stale, against hand-checked numbers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import duckdb
import polars as pl

from medlake_assets.silver.quality.freshness import register_freshness_view
from medlake_assets.spec import SourceSpec

AS_OF = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def arrivals(source: str, facility: str, times: list[datetime], files_per_tick: int = 1) -> list[dict]:
    return [
        {
            "source": source,
            "facility": facility,
            "landing_day": at.date(),
            "first_seen_at": at.replace(tzinfo=None),  # the ledger keeps UTC without an offset on SQLite
            "status": "loaded",
        }
        for at in times
        for _ in range(files_per_tick)
    ]


def every(step: timedelta, last: datetime, count: int) -> list[datetime]:
    return [last - step * n for n in range(count)]


def freshness_rows(rows: list[dict], specs: dict[str, SourceSpec]) -> dict[str, tuple]:
    con = duckdb.connect()
    con.execute("CREATE SCHEMA meta")
    frame = pl.DataFrame(
        rows,
        schema={
            "source": pl.String,
            "facility": pl.String,
            "landing_day": pl.Date,
            "first_seen_at": pl.Datetime("us"),
            "status": pl.String,
        },
    )
    con.register("frame", frame.to_arrow())
    con.execute("CREATE TABLE meta.files AS SELECT * FROM frame")
    register_freshness_view(con, specs)
    con.execute("SET VARIABLE as_of = ?::TIMESTAMPTZ", [AS_OF])
    result = con.execute(
        "SELECT facility, deliveries, usual_interval_minutes, limit_minutes, limit_basis, lag_minutes, stale "
        "FROM meta.freshness WHERE source = 'lab_results' ORDER BY facility"
    ).fetchall()
    return {row[0]: row[1:] for row in result}


def test_cadence_lag_and_limit_per_facility(sources: dict[str, SourceSpec]) -> None:
    lab = sources["lab_results"]  # freshness SLA 120 minutes; defaults: factor 1.5, 6 deliveries, 10 min
    quality = lab.quality.model_copy(
        update={"facilities": {"F6": lab.quality.facility("F6").model_copy(update={"max_lag_minutes": 30})}}
    )
    specs = {"lab_results": lab.model_copy(update={"quality": quality})}
    hour, t = timedelta(hours=1), AS_OF
    rows = (
        # hourly, 3 files a push, stopped 2.5 h ago: usual 60 min, limit 90, stale
        arrivals("lab_results", "F1", every(hour, t - timedelta(minutes=150), 24), files_per_tick=3)
        # hourly and on time
        + arrivals("lab_results", "F2", every(hour, t - timedelta(minutes=30), 24))
        # two deliveries only: no cadence yet, the source's SLA applies
        + arrivals("lab_results", "F3", [t - timedelta(minutes=100), t - timedelta(minutes=160)])
        # every 2 minutes, last 8 minutes ago: 1.5 x 2 = 3 minutes is below the 10-minute floor
        + arrivals("lab_results", "F4", every(timedelta(minutes=2), t - timedelta(minutes=8), 30))
        # daily at 06:00: 6 hours late for the SLA, but on time for its own cadence
        + arrivals("lab_results", "F5", every(timedelta(days=1), t - timedelta(hours=6), 8))
        # hourly, 45 minutes ago, with its own 30-minute limit in metadata
        + arrivals("lab_results", "F6", every(hour, t - timedelta(minutes=45), 24))
        # older than the lookback (14 days): forgotten
        + arrivals("lab_results", "F7", every(hour, t - timedelta(days=20), 24))
    )
    assert freshness_rows(rows, specs) == {
        "F1": (24, 60.0, 90.0, "cadence", 150.0, True),
        "F2": (24, 60.0, 90.0, "cadence", 30.0, False),
        "F3": (2, 60.0, 120.0, "source_sla", 100.0, False),
        "F4": (30, 2.0, 10.0, "cadence", 8.0, False),
        "F5": (8, 1440.0, 2160.0, "cadence", 360.0, False),
        "F6": (24, 60.0, 30.0, "facility", 45.0, True),
    }


def test_a_source_without_a_freshness_rule_is_not_listed(sources: dict[str, SourceSpec]) -> None:
    lab = sources["lab_results"]
    silent = lab.model_copy(update={"checks": [c for c in lab.checks if c.rule != "freshness"]})
    rows = arrivals("lab_results", "F1", every(timedelta(hours=1), AS_OF - timedelta(days=1), 24))
    assert freshness_rows(rows, {"lab_results": silent}) == {}


def test_unknown_sources_and_rows_without_a_facility_are_left_out(sources: dict[str, SourceSpec]) -> None:
    rows = [
        *arrivals("lab_results", "F1", [AS_OF - timedelta(minutes=5)]),
        {
            "source": None,
            "facility": None,
            "landing_day": date(2026, 11, 21),
            "first_seen_at": datetime(2026, 11, 21, 11, 0),
            "status": "quarantined",
        },
        *arrivals("retired_feed", "F1", [AS_OF - timedelta(days=1)]),
    ]
    assert freshness_rows(rows, {"lab_results": sources["lab_results"]}) == {
        "F1": (1, None, 120.0, "source_sla", 5.0, False)
    }
