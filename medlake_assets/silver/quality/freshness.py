"""`meta.freshness`: per source and facility, when it last sent something, its usual cadence, its limit
and whether it is stale. One DuckDB view over the ledger, so the scheduled `freshness` checks, `medlake
status` and the data_quality_scorecard report all read the same numbers.

A facility's arrivals are the distinct `first_seen_at` of its files in `meta.files` (when the landing
sensor first listed them, whatever became of them: a feed sending bad archives is not silent), over the
landing days of the last `quality.facility_freshness.lookback_days`. Files listed in one sensor tick share
that time, so a push of several files is one delivery. Its usual interval is the median time between
deliveries; the limit is, first that applies:
- `facility`: its own `quality.facilities.<id>.max_lag_minutes` from metadata;
- `cadence`: with at least `min_deliveries` deliveries, `late_factor` x the usual interval, but never
  under `min_lag_minutes` (an hourly sender is late after 90 minutes with the defaults);
- `source_sla`: otherwise the source's own freshness SLA (`{rule: freshness, max_lag_minutes}`).
It is stale when the minutes since its last delivery exceed the limit. The clock is
`getvariable('as_of')` when set (a report's run time), else now. A facility silent for longer than the
lookback drops out of the view: retire it in metadata, or it is reported stale for that long.
"""

from __future__ import annotations

from collections.abc import Mapping

import duckdb

from medlake_assets.silver.quality.gate import freshness_sla
from medlake_assets.spec import SourceSpec

FRESHNESS_VIEW = "meta.freshness"
_SETTINGS_COLUMNS = (
    "source VARCHAR, sla_minutes DOUBLE, severity VARCHAR, lookback_days INTEGER, late_factor DOUBLE, "
    "min_deliveries INTEGER, min_lag_minutes DOUBLE"
)
_OVERRIDE_COLUMNS = "source VARCHAR, facility VARCHAR, max_lag_minutes DOUBLE"

_QUERY = """
WITH settings AS ({settings}),
overrides AS ({overrides}),
clock AS (SELECT coalesce(getvariable('as_of')::TIMESTAMPTZ, now()) AS as_of),
arrivals AS (
    -- epoch() reads a SQLite ledger's naive UTC text and a PostgreSQL timestamptz alike.
    SELECT DISTINCT f.source, f.facility, epoch(f.first_seen_at) AS arrived
    FROM meta.files AS f JOIN settings AS s ON f.source = s.source, clock
    WHERE f.facility IS NOT NULL
      AND f.landing_day >= CAST(timezone('UTC', clock.as_of) AS DATE) - s.lookback_days
      AND epoch(f.first_seen_at) <= epoch(clock.as_of)
),
gaps AS (
    SELECT
        source,
        facility,
        arrived,
        arrived - lag(arrived) OVER (PARTITION BY source, facility ORDER BY arrived) AS gap
    FROM arrivals
),
cadence AS (
    SELECT source, facility, max(arrived) AS last_at, count(*) AS deliveries, median(gap) / 60 AS usual
    FROM gaps GROUP BY source, facility
),
limits AS (
    SELECT
        c.*,
        s.sla_minutes,
        s.severity,
        CASE
            WHEN o.max_lag_minutes IS NOT NULL THEN o.max_lag_minutes
            WHEN c.deliveries >= s.min_deliveries THEN greatest(c.usual * s.late_factor, s.min_lag_minutes)
            ELSE s.sla_minutes
        END AS limit_minutes,
        CASE
            WHEN o.max_lag_minutes IS NOT NULL THEN 'facility'
            WHEN c.deliveries >= s.min_deliveries THEN 'cadence'
            ELSE 'source_sla'
        END AS limit_basis,
        (epoch(clock.as_of) - c.last_at) / 60 AS lag
    FROM cadence AS c
    JOIN settings AS s ON c.source = s.source
    LEFT JOIN overrides AS o ON c.source = o.source AND c.facility = o.facility,
    clock
)
SELECT
    source,
    facility,
    to_timestamp(last_at) AS last_arrival,
    deliveries,
    usual AS usual_interval_minutes,
    limit_minutes,
    limit_basis,
    lag AS lag_minutes,
    lag > limit_minutes AS stale,
    sla_minutes,
    severity
FROM limits
"""


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value)) if isinstance(value, float) else str(int(value))  # type: ignore[call-overload]


def _relation(rows: list[tuple], columns: str) -> str:
    """A SELECT of literal rows with typed columns (an empty one when there are no rows)."""
    names = [column.split()[0] for column in columns.split(", ")]
    types = [column.split()[1] for column in columns.split(", ")]
    if not rows:
        return (
            "SELECT "
            + ", ".join(f"NULL::{t} AS {n}" for n, t in zip(names, types, strict=True))
            + " WHERE false"
        )
    values = ", ".join("(" + ", ".join(_literal(value) for value in row) + ")" for row in rows)
    casts = ", ".join(f"{n}::{t} AS {n}" for n, t in zip(names, types, strict=True))
    return f"SELECT {casts} FROM (VALUES {values}) AS v({', '.join(names)})"


def freshness_settings(specs: Mapping[str, SourceSpec]) -> tuple[list[tuple], list[tuple]]:
    """(per source, per facility override) rows from metadata; sources without a freshness rule are left
    out."""
    sources, overrides = [], []
    for name, spec in sorted(specs.items()):
        sla = freshness_sla(spec)
        if sla is None:
            continue
        policy = spec.quality.facility_freshness
        sources.append(
            (
                name,
                float(sla[0]),
                sla[1],
                policy.lookback_days,
                policy.late_factor,
                policy.min_deliveries,
                float(policy.min_lag_minutes),
            )
        )
        for facility, own in sorted(spec.quality.facilities.items()):
            if own.max_lag_minutes is not None:
                overrides.append((name, facility, float(own.max_lag_minutes)))
    return sources, overrides


def freshness_query(specs: Mapping[str, SourceSpec]) -> str:
    """The SELECT behind `meta.freshness` (DuckDB SQL over `meta.files`), with the sources' settings."""
    sources, overrides = freshness_settings(specs)
    return _QUERY.format(
        settings=_relation(sources, _SETTINGS_COLUMNS), overrides=_relation(overrides, _OVERRIDE_COLUMNS)
    )


def register_freshness_view(con: duckdb.DuckDBPyConnection, specs: Mapping[str, SourceSpec]) -> None:
    """Create `meta.freshness` over `meta.files` (which must exist) with the sources' settings."""
    con.execute(f"CREATE OR REPLACE VIEW {FRESHNESS_VIEW} AS {freshness_query(specs)}")


__all__ = ["FRESHNESS_VIEW", "freshness_query", "freshness_settings", "register_freshness_view"]
