"""What an operator needs to see per source, from the ledger views (`meta.files`, `meta.processed`,
`meta.held`, `meta.freshness`) and the quarantine tables: the data behind `medlake status`. Counts, ids,
rule codes and times only, never a record value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from medlake_assets.silver.quality.gate import freshness_sla
from medlake_assets.spec import SourceSpec

UNROUTED = "(no source)"


@dataclass(frozen=True)
class HeldFacility:
    facility: str
    rows: int
    batches: int
    days: int
    since: datetime
    released: int
    """Slices released by an operator and waiting for their silver run."""


@dataclass(frozen=True)
class StaleFacility:
    facility: str
    last_arrival: datetime
    lag_minutes: float
    limit_minutes: float
    limit_basis: str


@dataclass
class SourceStatus:
    source: str
    pending: int = 0
    """Archives registered, not yet in a batch."""
    loading: int = 0
    """Archives in a batch that has not finished loading."""
    loading_batches: int = 0
    awaiting_silver: int = 0
    """Loaded bronze batches silver has not taken in yet."""
    held: list[HeldFacility] = field(default_factory=list)
    quarantined_archives: int = 0
    archive_rules: list[tuple[str, int]] = field(default_factory=list)
    """Quarantined archives per rule, most first."""
    quarantined_rows: int = 0
    row_rules: list[tuple[str, int]] = field(default_factory=list)
    """Rows in `quarantine.<source>` per rule (bronze parse and silver rule failures), most first."""
    watched: bool = False
    """The source has a freshness rule."""
    facilities_seen: int = 0
    stale: list[StaleFacility] = field(default_factory=list)
    last_quarantined_at: datetime | None = None
    last_quarantined_rule: str | None = None
    last_quarantined_key: str | None = None


def _has(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    query = "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?"
    views = "SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND view_name = ?"
    return bool(
        con.execute(query, [schema, name]).fetchone()[0] or con.execute(views, [schema, name]).fetchone()[0]
    )


def source_status(con: duckdb.DuckDBPyConnection, specs: Mapping[str, SourceSpec]) -> list[SourceStatus]:
    """One status per source (metadata's sources, any other source in the ledger, and the objects no source
    claimed as `(no source)`), in name order; `con` is `serving.sql.connect`'s."""
    found = {
        name: SourceStatus(name, watched=freshness_sla(spec) is not None) for name, spec in specs.items()
    }

    def status(name: str | None) -> SourceStatus:
        key = name or UNROUTED
        return found.setdefault(key, SourceStatus(key))

    for source, pending, loading, batches, quarantined in con.execute(
        """
        SELECT source,
               count(*) FILTER (WHERE status = 'pending' AND batch_id IS NULL),
               count(*) FILTER (WHERE status = 'pending' AND batch_id IS NOT NULL),
               count(DISTINCT batch_id) FILTER (WHERE status = 'pending'),
               count(*) FILTER (WHERE status = 'quarantined')
        FROM meta.files GROUP BY source
        """
    ).fetchall():
        item = status(source)
        item.pending, item.loading, item.loading_batches, item.quarantined_archives = (
            pending,
            loading,
            batches,
            quarantined,
        )
    for source, when, rule, key in con.execute(
        """
        SELECT source, max(updated_at), arg_max(rule, updated_at), arg_max(key, updated_at)
        FROM meta.files WHERE status = 'quarantined' GROUP BY source
        """
    ).fetchall():
        item = status(source)
        item.last_quarantined_at, item.last_quarantined_rule, item.last_quarantined_key = when, rule, key
    for source, rule, count in con.execute(
        """
        SELECT source, rule, count(*) FROM meta.files WHERE status = 'quarantined'
        GROUP BY ALL ORDER BY source, count(*) DESC, rule
        """
    ).fetchall():
        status(source).archive_rules.append((rule, count))
    for source, batches in con.execute(
        """
        SELECT f.source, count(DISTINCT f.batch_id)
        FROM meta.files AS f
        LEFT JOIN meta.processed AS p ON p.batch_id = f.batch_id AND p.consumer = 'silver.' || f.source
        WHERE f.status = 'loaded' AND p.batch_id IS NULL
        GROUP BY f.source
        """
    ).fetchall():
        status(source).awaiting_silver = batches
    for source, facility, rows, batches, days, since, released in con.execute(
        """
        SELECT source, facility, sum(rows - rejected), count(*), count(DISTINCT landing_day), min(held_at),
               count(*) FILTER (WHERE status = 'released')
        FROM meta.held WHERE status IN ('held', 'released')
        GROUP BY source, facility ORDER BY source, sum(rows - rejected) DESC, facility
        """
    ).fetchall():
        status(source).held.append(HeldFacility(facility, int(rows), batches, days, since, released))
    for source, count in con.execute(
        "SELECT source, count(*) FROM meta.freshness GROUP BY source"
    ).fetchall():
        status(source).facilities_seen = count
    for source, facility, last, lag, limit, basis in con.execute(
        """
        SELECT source, facility, last_arrival, lag_minutes, limit_minutes, limit_basis
        FROM meta.freshness WHERE stale ORDER BY source, lag_minutes DESC, facility
        """
    ).fetchall():
        status(source).stale.append(StaleFacility(facility, last, lag, limit, basis))
    for item in found.values():
        if item.source != UNROUTED and _has(con, "quarantine", item.source):
            item.row_rules = con.execute(
                f'SELECT rule, count(*) FROM quarantine."{item.source}" GROUP BY rule ORDER BY 2 DESC, 1'
            ).fetchall()
            item.quarantined_rows = sum(count for _, count in item.row_rules)
    return [found[name] for name in sorted(found, key=lambda name: (name == UNROUTED, name))]


__all__ = ["UNROUTED", "HeldFacility", "SourceStatus", "StaleFacility", "source_status"]
