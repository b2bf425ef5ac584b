"""Detect landed objects: list the open day prefixes, route keys to sources, register them in the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

from medlake_assets.lake.ledger import LandedFile, Ledger
from medlake_assets.lake.objectstore import ObjectStore, StoredObject
from medlake_assets.spec import SourceSpec

LANDING = "landing/"
QUARANTINE = "quarantine/"
FUTURE_DAY = "landing.future_day"


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


@dataclass(frozen=True)
class Listing:
    """What a landing tick lists, and the cursor it leaves."""

    prefixes: list[str]
    since: date
    earlier_days_listed_at: datetime


def plan_listing(
    specs: Sequence[SourceSpec],
    claimable: Iterable[str],
    since: date | None,
    earlier_days_listed_at: datetime | None,
    now: datetime,
) -> Listing:
    """The prefixes a tick lists. A listing costs what the listed days hold: the open days before today
    (only late files land there; two thirds of a full listing at the end of a day) every
    `ingest.earlier_days_every_minutes` and at a day's first tick (what landed in yesterday's folder after its
    last tick); otherwise today's folder of the `claimable` sources only, those a run can take now
    (backpressure: what it would register waits behind their batches anyway). `since` moves only when the
    days before today are listed, so a day leaving the open window between two such listings is listed once
    more."""
    today = now.date()
    open_days = max(spec.ingest.open_days for spec in specs)
    every = timedelta(minutes=min(spec.ingest.earlier_days_every_minutes for spec in specs))
    last = earlier_days_listed_at
    if since is None or last is None or now - last >= every or last.date() != today:
        days = days_to_list(since, today, open_days)
        prefixes = [day_prefix(spec.name, day) for spec in specs for day in days]
        return Listing(prefixes, today - timedelta(days=open_days), now)
    return Listing([day_prefix(name, today) for name in claimable], since, last)


def _name(folder: str) -> str:
    return folder.rstrip("/").rsplit("/", 1)[-1]


def _is_year(name: str) -> bool:
    return len(name) == 4 and name.isdigit()


def _is_month(name: str) -> bool:
    return len(name) == 2 and name.isdigit() and 1 <= int(name) <= 12


def landing_day_of(year: str, month: str, day: str) -> date | None:
    """The day that `<yyyy>/<mm>/<dd>` folder names give, written exactly as `day_prefix` writes it, or None
    (a folder `5/` for the 5th is never listed by a sensor, which lists `05/`)."""
    if not (_is_year(year) and _is_month(month) and len(day) == 2 and day.isdigit()):
        return None
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def landed_days(store: ObjectStore, source: str) -> list[date]:
    """Every landing day folder present for a source (three cheap delimiter listings deep)."""
    days = []
    for year in store.list_prefixes(f"{LANDING}{source}/"):
        for month in store.list_prefixes(year):
            for day_folder in store.list_prefixes(month):
                day = landing_day_of(_name(year), _name(month), _name(day_folder))
                if day is not None:
                    days.append(day)
    return sorted(days)


@dataclass(frozen=True)
class Strays:
    """What no sensor's day listing reaches: loose objects, and folders to list whole."""

    objects: list[StoredObject]
    prefixes: list[str]


def find_strays(store: ObjectStore, sources: Iterable[SourceSpec], today: date) -> Strays:
    """Everything under `landing/` outside the day folders the landing sensors list.

    Walks only the levels above the day folders with delimiter listings: `landing/`, each source, year and
    month folder, i.e. 1 + S x (1 + Y + 12 Y) listings for S sources with Y years of history (about 27 per
    source for two years), however many objects the days hold. Objects directly at those levels are
    strays; so are folders that are not a source, a year, a month or a day as `day_prefix` writes it, and
    day folders after today (listed whole; they are rare). Days before the sensor's open window are not
    strays: `medlake ingest --once` and backfills load them.
    """
    names = {spec.name for spec in sources}
    folders, strays = store.list_level(LANDING)
    prefixes: list[str] = []
    for folder in folders:
        if _name(folder) not in names:
            prefixes.append(folder)
            continue
        years, loose = store.list_level(folder)
        strays += loose
        for year in years:
            if not _is_year(_name(year)):
                prefixes.append(year)
                continue
            months, loose = store.list_level(year)
            strays += loose
            for month in months:
                if not _is_month(_name(month)):
                    prefixes.append(month)
                    continue
                days, loose = store.list_level(month)
                strays += loose
                for day_folder in days:
                    day = landing_day_of(_name(year), _name(month), _name(day_folder))
                    if day is None or day > today:
                        prefixes.append(day_folder)
    return Strays(strays, prefixes)


@dataclass(frozen=True)
class Routed:
    obj: StoredObject
    source: str | None
    facility: str | None
    landing_day: date | None
    rule: str | None = None
    reason: str | None = None


def route(obj: StoredObject, sources: Iterable[SourceSpec]) -> Routed:
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
class ScanResult:
    listed: int
    registered: int
    quarantined: int


def register_landed(
    store: ObjectStore,
    ledger: Ledger,
    sources: Sequence[SourceSpec],
    prefixes: Sequence[str],
    objects: Sequence[StoredObject] = (),
    *,
    today: date | None = None,
) -> ScanResult:
    """List prefixes (and take `objects` as listed), register new objects as pending, and quarantine the
    ones no single source claims. An object of a day after `today` (default: today, UTC) is registered
    held (`landing.future_day`) until its day comes."""
    today = today or datetime.now(UTC).date()
    listed = registered = quarantined = 0
    batches = [(prefix, list(store.list(prefix))) for prefix in prefixes]
    for obj in objects:  # loose objects: known-check each one by its own key
        batches.append((obj.key, [obj]))
    for prefix, found in batches:
        fresh = _unknown(store, ledger, prefix, found)
        listed += len(fresh)
        routed = [route(obj, sources) for obj in fresh]
        good = [item for item in routed if item.rule is None]
        now = [item for item in good if item.landing_day <= today]
        later = [item for item in good if item.landing_day > today]
        registered += ledger.register([_new(store, item) for item in now])
        registered += ledger.register(
            [_new(store, item) for item in later],
            hold=(FUTURE_DAY, "the landing day is after today: it loads once that day comes"),
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
                [_new(store, item)], item.rule, item.reason or "", quarantine_key
            )
    return ScanResult(listed, registered, quarantined)


def _unknown(
    store: ObjectStore, ledger: Ledger, prefix: str, found: list[StoredObject]
) -> list[StoredObject]:
    """The listed objects whose content the ledger does not hold yet, with their content id as etag.

    An object is known by (key, content id): a copied or restored file is the same version. The content id
    is read only for a listed stamp (etag) never seen before; a stamp that is not the content id itself (a
    local file's size-mtime-inode) is remembered, so the next listing reads nothing.
    """
    known = ledger.known_keys(store.uri, prefix)
    # Known as listed: S3, whose etag is the content id, or a local row registered before content ids.
    unknown = [obj for obj in found if (obj.key, obj.etag) not in known]
    stamped = ledger.stamped(store.uri, prefix) if unknown else {}
    fresh, new_stamps = [], []
    for obj in unknown:
        etag = stamped.get((obj.key, obj.etag))
        if etag is None:
            try:
                etag = store.content_id(obj)
            except FileNotFoundError:  # removed since the listing: nothing to register
                continue
            if etag != obj.etag:
                new_stamps.append((obj.key, obj.etag, etag))
        if (obj.key, etag) not in known:
            fresh.append(replace(obj, etag=etag))
    ledger.record_stamps(store.uri, new_stamps)
    return fresh


def _new(store: ObjectStore, item: Routed) -> LandedFile:
    obj = item.obj
    return LandedFile(store.uri, obj.key, obj.etag, obj.size, item.source, item.facility, item.landing_day)
