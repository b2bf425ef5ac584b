"""What the lake holds and what it held: table listings (`medlake tables`) and time-travel resolution.

An `as_of` is a snapshot id or a point in time. A point in time picks, in every table, the snapshot that
was current then. A snapshot id belongs to one table; it stands for its commit time, so the other tables
read as of that same moment and a query across tables sees one consistent lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake

AsOf = int | str | datetime


class AsOfError(MedlakeError, ValueError):
    """An `as_of` that is neither a snapshot id nor an ISO timestamp, or names no known snapshot."""


@dataclass(frozen=True)
class TableInfo:
    """One Iceberg table as `medlake tables` lists it (figures from the current snapshot's summary)."""

    name: str
    rows: int
    snapshots: int
    last_updated: datetime | None
    size_bytes: int
    data_files: int


@dataclass(frozen=True)
class PointInTime:
    """A resolved `as_of`: epoch milliseconds, plus the table and snapshot it came from when given an id."""

    timestamp_ms: int
    table: str | None = None
    snapshot_id: int | None = None


def parse_as_of(value: AsOf) -> int | datetime:
    """A snapshot id (an integer, or a string of digits) or a timezone-aware datetime (naive means UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int):
        return value
    else:
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise AsOfError(
                f"as_of {text!r} is neither a snapshot id nor an ISO timestamp (e.g. 2026-11-20T08:00:00Z)"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def table_names(catalog: Catalog) -> list[str]:
    """Every table as `<namespace>.<table>`, sorted."""
    return sorted(
        ".".join(identifier)
        for namespace in catalog.list_namespaces()
        for identifier in catalog.list_tables(namespace)
    )


def resolve_as_of(catalog: Catalog, as_of: AsOf, tables: dict[str, Table] | None = None) -> PointInTime:
    """Turn an `as_of` into a point in time; a snapshot id is looked up across the lake's tables."""
    parsed = parse_as_of(as_of)
    if isinstance(parsed, datetime):
        return PointInTime(timestamp_ms=int(parsed.timestamp() * 1000))
    if tables is None:
        tables = {name: catalog.load_table(name) for name in table_names(catalog)}
    for name, table in tables.items():
        snapshot = table.snapshot_by_id(parsed)
        if snapshot is not None:
            return PointInTime(timestamp_ms=snapshot.timestamp_ms, table=name, snapshot_id=parsed)
    raise AsOfError(f"no table in the lake has snapshot {parsed}")


def created_ms(table: Table) -> int:
    """When the table was created: the time of its first metadata file."""
    log = table.metadata.metadata_log
    return min(entry.timestamp_ms for entry in log) if log else table.metadata.last_updated_ms


def snapshot_at(name: str, table: Table, point: PointInTime) -> Snapshot | None:
    """The table's snapshot at `point` (None: the table existed but was still empty, or did not exist).

    A time before the oldest snapshot kept is an error when older ones were expired (a table's first
    commit has sequence number 1; expiry also clears the kept one's parent id): the table had rows then,
    so an empty answer would be wrong."""
    if point.table == name and point.snapshot_id is not None:
        return table.snapshot_by_id(point.snapshot_id)
    snapshot = table.snapshot_as_of_timestamp(point.timestamp_ms)
    if snapshot is None and table.metadata.snapshots:
        oldest = min(table.metadata.snapshots, key=lambda kept: kept.timestamp_ms)
        if (oldest.sequence_number or 0) > 1 and existed_at(table, point):
            kept_from = datetime.fromtimestamp(oldest.timestamp_ms / 1000, UTC).isoformat()
            raise AsOfError(
                f"{name} keeps history from {kept_from} on: older snapshots were expired under its retention"
            )
    return snapshot


def existed_at(table: Table, point: PointInTime) -> bool:
    return created_ms(table) <= point.timestamp_ms


def table_info(name: str, table: Table) -> TableInfo:
    """Row count, file count and size from the current snapshot's summary, which every commit writes."""
    snapshot = table.current_snapshot()
    summary = snapshot.summary if snapshot is not None and snapshot.summary is not None else {}
    return TableInfo(
        name=name,
        rows=int(summary.get("total-records", 0)),
        snapshots=len(table.metadata.snapshots),
        last_updated=datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC) if snapshot else None,
        size_bytes=int(summary.get("total-files-size", 0)),
        data_files=int(summary.get("total-data-files", 0)),
    )


def tables(lake: Lake) -> list[TableInfo]:
    """Every Iceberg table of the lake with its rows, snapshots, last update and data size, by name."""
    return [table_info(name, lake.catalog.load_table(name)) for name in table_names(lake.catalog)]
