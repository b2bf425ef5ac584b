"""Detect landed objects: list the open day prefixes, route keys to sources, register them in the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from medlake_assets.ingest.objectstore import ObjectInfo, ObjectStore
from medlake_assets.spec import SourceSpec
from medlake_assets.tables.ledger import Ledger, NewObject

LANDING = "landing/"
QUARANTINE = "quarantine/"


def day_prefix(source: str, day: date) -> str:
    return f"{LANDING}{source}/{day:%Y/%m/%d}/"


def quarantine_key(key: str) -> str:
    return f"{QUARANTINE}{key}"


def days_to_list(since: date | None, today: date, open_days: int) -> list[date]:
    """The landing days a tick lists: the open window before today, or further back to catch up."""
    first = today - timedelta(days=open_days)
    if since is not None and since < first:
        first = since
    return [first + timedelta(days=offset) for offset in range((today - first).days + 1)]


def landed_days(store: ObjectStore, source: str) -> list[date]:
    """Every landing day folder present for a source (three cheap delimiter listings deep)."""
    days = []
    for year in store.list_prefixes(f"{LANDING}{source}/"):
        for month in store.list_prefixes(year):
            for day in store.list_prefixes(month):
                parts = day.rstrip("/").split("/")[-3:]
                try:
                    days.append(date(int(parts[0]), int(parts[1]), int(parts[2])))
                except ValueError:
                    continue
    return sorted(days)


@dataclass(frozen=True)
class Routed:
    obj: ObjectInfo
    source: str | None
    facility: str | None
    landing_day: date | None
    rule: str | None = None
    reason: str | None = None


def route(obj: ObjectInfo, sources: Iterable[SourceSpec]) -> Routed:
    """Match a key against every source's pattern: exactly one must claim it."""
    matches = [(spec, match) for spec in sources if (match := spec.landing.key_regex.match(obj.key))]
    if not matches:
        return Routed(obj, None, None, None, "landing.no_source", "the key matches no source's key_pattern")
    if len(matches) > 1:
        names = sorted(spec.name for spec, _ in matches)
        return Routed(
            obj, None, None, None, "landing.ambiguous_source", f"the key matches several sources {names}"
        )
    spec, match = matches[0]
    try:
        day = date(int(match["yyyy"]), int(match["mm"]), int(match["dd"]))
    except ValueError:
        return Routed(
            obj, spec.name, match["facility"], None, "landing.bad_day", "the key's yyyy/mm/dd is not a date"
        )
    return Routed(obj, spec.name, match["facility"], day)


def quarantine_original(store: ObjectStore, key: str, data: bytes | None, reason: dict) -> str:
    """Keep a copy of the original bytes under `quarantine/` beside a JSON reason (no record values)."""
    target = quarantine_key(key)
    store.put(target, data if data is not None else store.get(key))
    store.put(f"{target}.reason.json", json.dumps(reason, indent=2, default=str).encode())
    return target


@dataclass(frozen=True)
class ScanReport:
    listed: int
    registered: int
    quarantined: int


def register_landed(
    store: ObjectStore, ledger: Ledger, sources: Sequence[SourceSpec], prefixes: Sequence[str]
) -> ScanReport:
    """List prefixes, register new objects as pending, and quarantine the ones no single source claims."""
    listed = registered = quarantined = 0
    for prefix in prefixes:
        known = ledger.known_keys(store.uri, prefix)
        fresh = [obj for obj in store.list(prefix) if (obj.key, obj.etag) not in known]
        listed += len(fresh)
        routed = [route(obj, sources) for obj in fresh]
        good = [item for item in routed if item.rule is None]
        registered += ledger.register(
            [
                NewObject(store.uri, r.obj.key, r.obj.etag, r.obj.size, r.source, r.facility, r.landing_day)
                for r in good
            ]
        )
        for item in routed:
            if item.rule is None:
                continue
            reason = {"key": item.obj.key, "rule": item.rule, "reason": item.reason}
            # The copy before the ledger row: the ledger never calls an object quarantined without its copy.
            # If the copy fails, the object stays unregistered and the next tick tries again (a repeated
            # copy writes the same bytes).
            quarantine_original(store, item.obj.key, None, reason)
            quarantined += ledger.quarantine_unrouted(
                [
                    NewObject(
                        store.uri,
                        item.obj.key,
                        item.obj.etag,
                        item.obj.size,
                        item.source,
                        item.facility,
                        None,
                    )
                ],
                item.rule,
                item.reason or "",
                quarantine_key,
            )
    return ScanReport(listed, registered, quarantined)


def unrouted_prefixes(store: ObjectStore, sources: Iterable[str]) -> list[str]:
    """Top-level landing folders that belong to no source (their objects can only be quarantined)."""
    known = {f"{LANDING}{name}/" for name in sources}
    return [prefix for prefix in store.list_prefixes(LANDING) if prefix not in known]
