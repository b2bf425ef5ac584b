"""Synthetic, production-shaped facility feeds (`medlake generate`).

`generate_feeds` plans a day of archives (source, facility, time, packing, target size, and which ones are
bad on purpose), builds each archive's members, packs it and hands `(key, bytes)` to `put`. It returns a
manifest that says exactly what a correct pipeline loads and quarantines: archives, members, records (one CSV
row, one HL7 message, one XML document) and the rule each planned bad file must be reported with. Bronze bad
files are caught while ingesting; silver ones hold one record that bronze loads as text and silver's typing or
quality gate rejects (`silver_rejected_records`).

Everything derives from `seed` and `day` (no wall clock), so the same arguments give the same archives; the
one exception is the random ZipCrypto encryption header libarchive writes (see `writers`).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import math
import os
import random
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import pyzipper

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.settings import DEFAULT_SOURCES_DIR
from medlake_assets.spec import ArchiveLimits, SourceSpec, load_sources
from medlake_dev.generate import values
from medlake_dev.generate.values import FacilityKind, LabTest
from medlake_dev.generate.writers import (
    gzip_bytes,
    zip_aes,
    zip_bomb,
    zip_plain,
    zip_with_raw_names,
    zip_zipcrypto,
)

__all__ = [
    "BAD_KINDS",
    "SOURCES",
    "BadKind",
    "Facility",
    "MissingPasswordError",
    "generate_feeds",
    "make_facilities",
    "pick_target_sizes",
    "write_feeds",
]

Put = Callable[[str, bytes], None]
Packing = Literal["aes", "zipcrypto", "gzip"]

ADT, LAB, BED, DOC = "adt_events", "lab_results", "bed_census", "patient_documents"
SOURCES: tuple[str, ...] = (ADT, LAB, BED, DOC)
SOURCE_WEIGHTS: tuple[float, ...] = (0.35, 0.35, 0.15, 0.15)
CSV_SOURCES = frozenset({LAB, BED})
MEMBER_SUFFIX = {ADT: ".txt", LAB: ".csv", BED: ".csv", DOC: ".xml"}

# Packing shares over all archives: AES 50%, ZipCrypto 35%, gzip 15%. Only the CSV sources (half the archives)
# may be gzip, so they are gzip 30% of the time; zips are AES 50 times in 85.
GZIP_SHARE_OF_CSV = 0.30
AES_SHARE_OF_ZIPS = 50 / 85

# Compressed archive sizes seen in production: 99% between 20 KB and 1.5 MB, about 1% up to 40 MB.
SMALL_MIN_BYTES = 20_000
SMALL_MAX_BYTES = 1_500_000
LARGE_MAX_BYTES = 40_000_000
MEDIAN_BYTES = 150_000
SIZE_SIGMA = 0.85
LARGE_SHARE = 0.01
# Uncompressed text per compressed byte, measured on this generator's own output (deflate level 6).
EXPECTED_RATIO = {ADT: 7.5, LAB: 11.5, BED: 7.5, DOC: 6.2}

DOCS_PER_ARCHIVE = (20, 300)
DOC_BYTES = (5_000, 30_000)
BOMB_BYTES = 200_000_000
BOMB_MIN_BYTES = 8 * 1024**2  # still ~1000:1, far past any ratio cap, when size_scale shrinks the bomb

LAB_HEADER = (
    "facility_id",
    "patient_id",
    "order_id",
    "test_code",
    "test_name",
    "value",
    "unit",
    "reference_range",
    "abnormal_flag",
    "result_status",
    "result_ts",
)
BED_HEADER = ("facility_id", "unit", "bed_id", "status", "patient_id", "updated_at")
# The non-nullable column a `csv_missing_column` file leaves out.
DROPPED_COLUMN = {LAB: "order_id", BED: "bed_id"}
MIN_CSV_ROWS = 8  # every CSV member has at least this many rows, so a planned bad row always has a place
# Good archives stay well inside the reader's limits: at most half its total and member caps, 64 MiB a member.
MAX_MEMBER_TEXT = 64 * 1024**2
_BED_STATUS_CUMULATIVE = tuple(itertools.accumulate(values.BED_STATUS_WEIGHTS))


@dataclass(frozen=True)
class BadKind:
    """A planned defect and the rule the pipeline must report for it.

    `level` says where the defect is: `landing` (no source claims the key), `archive` (it cannot be opened
    safely), `member` (every member is rejected, so the archive loads nothing) or `record` (one record is
    rejected and the archive loads). Only `record` defects leave the archive loaded.

    `stage` says which stage rejects it: `bronze` (ingestion) or `silver` (a `record` that bronze loads as
    text and silver's casts or quality gate reject). A kind with `rotate_sources` takes its sources in turn
    (sorted), so each variant appears; the others keep the archive's drawn source when they apply to it.
    """

    name: str
    rule: str
    level: Literal["landing", "archive", "member", "record"]
    sources: frozenset[str]
    packings: frozenset[Packing] = frozenset({"aes", "zipcrypto"})
    stage: Literal["bronze", "silver"] = "bronze"
    rotate_sources: bool = False

    @property
    def expect(self) -> Literal["quarantined", "loaded"]:
        return "loaded" if self.level == "record" else "quarantined"


_ALL = frozenset(SOURCES)
_ANY_PACKING: frozenset[Packing] = frozenset({"aes", "zipcrypto", "gzip"})
# Round-robin order: every kind appears once bad_rate x archives >= len(BAD_KINDS). `no_source` and
# `silver_bad_timestamp` come first so that their two variants (unknown folder or `.rar` under a real source;
# lab or ADT) both appear once bad_rate x archives >= len(BAD_KINDS) + 2.
BAD_KINDS: tuple[BadKind, ...] = (
    BadKind("no_source", "landing.no_source", "landing", _ALL, _ANY_PACKING),
    BadKind(
        "silver_bad_timestamp",
        "cast.timestamp",
        "record",
        frozenset({LAB, ADT}),
        _ANY_PACKING,
        stage="silver",
        rotate_sources=True,
    ),
    BadKind("wrong_password", "archive.bad_password", "archive", _ALL),
    BadKind("corrupt_zip", "archive.corrupt", "archive", _ALL),
    BadKind("truncated_zip", "archive.corrupt", "archive", _ALL),
    BadKind("truncated_gzip", "archive.corrupt", "archive", CSV_SOURCES, frozenset({"gzip"})),
    BadKind("zip_bomb", "archive.bomb", "archive", _ALL),
    BadKind("path_traversal", "archive.unsafe_member_name", "archive", _ALL),
    BadKind("absolute_path", "archive.unsafe_member_name", "archive", _ALL),
    BadKind("empty_archive", "archive.empty", "archive", _ALL),
    BadKind("csv_missing_column", "csv.missing_column", "member", CSV_SOURCES, _ANY_PACKING),
    BadKind("hl7_no_msh", "hl7.no_msh", "member", frozenset({ADT})),
    BadKind("csv_bad_row", "csv.field_count", "record", CSV_SOURCES, _ANY_PACKING),
    BadKind("hl7_bad_message", "hl7.malformed_msh", "record", frozenset({ADT})),
    BadKind("xml_entity_bomb", "xml.doctype", "record", frozenset({DOC})),
    BadKind("xml_external_entity", "xml.doctype", "record", frozenset({DOC})),
    BadKind("xml_malformed", "xml.malformed", "record", frozenset({DOC})),
    BadKind("silver_bad_status", "check.allowed:status", "record", frozenset({BED}), _ANY_PACKING, "silver"),
    BadKind(
        "silver_bad_result_status",
        "check.allowed:result_status",
        "record",
        frozenset({LAB}),
        _ANY_PACKING,
        "silver",
    ),
    BadKind(
        "silver_bad_test_code", "check.regex:test_code", "record", frozenset({LAB}), _ANY_PACKING, "silver"
    ),
    BadKind(
        "silver_missing_required", "check.not_null:bed_id", "record", frozenset({BED}), _ANY_PACKING, "silver"
    ),
)
# What a silver bad kind writes into one CSV row: (column, value). "" is a null token of both CSV sources, so
# bronze loads a null bed_id and silver's not-null rule on the required column rejects it.
SILVER_CSV_EDITS: dict[str, tuple[str, str]] = {
    "silver_bad_status": ("status", "broken"),
    "silver_bad_result_status": ("result_status", "X"),
    "silver_bad_test_code": ("test_code", "GLU"),  # a local code where the feed promises LOINC
    "silver_bad_timestamp": ("result_ts", "2026-13-45T99:00:00"),  # month 13, day 45, hour 99
    "silver_missing_required": ("bed_id", ""),
}
BAD_HL7_TS = "2026BAD"  # MSH-7 of an ADT `silver_bad_timestamp` message: not an HL7 DTM


class MissingPasswordError(MedlakeError, LookupError):
    """No archive password is configured for a facility; the message names the variables, never a value."""


@dataclass(frozen=True)
class Facility:
    id: str
    number: int
    kind: FacilityKind
    units: tuple[tuple[str, int], ...]  # (unit, beds)


@dataclass(frozen=True)
class ArchivePlan:
    index: int
    source: str
    facility: Facility
    at: datetime  # when the archive was cut; its records are older
    packing: Packing
    target_bytes: int  # compressed size to aim for
    bad: BadKind | None = None
    occurrence: int = 0  # how many archives of the same bad kind came before this one
    size_scale: float = 1.0
    since: datetime | None = None  # when the previous archive of the same source and facility was cut

    @property
    def stem(self) -> str:
        return f"{self.source}_{self.facility.id}_{self.at:%H%M%S}_{self.index:04d}"

    @property
    def key(self) -> str:
        suffix = ".csv.gz" if self.packing == "gzip" else ".zip"
        return f"landing/{self.source}/{self.at:%Y/%m/%d}/{self.facility.id}/{self.stem}{suffix}"


@dataclass
class Payload:
    """An archive's members before packing: the records bronze loads, the ones it rejects, and how many of
    the loaded ones silver rejects."""

    members: dict[str, bytes]
    records: int
    rejected: int = 0
    silver_rejected: int = 0


@dataclass
class Outcome:
    key: str
    source: str | None
    data: bytes
    packing: str  # aes, zipcrypto, gzip, or plain / rar for some bad files
    members: int = 0
    records: int = 0
    rejected: int = 0
    silver_rejected: int = 0
    quarantined: bool = False
    bad: BadKind | None = None


# ---------------------------------------------------------------------------------------------- planning


def make_facilities(count: int, seed: int) -> list[Facility]:
    """`F0001`... with kinds in turn (hospital, emergency room, urgent care, nursing home), seeded beds."""
    rng = random.Random(f"facilities:{seed}")
    facilities = []
    for number in range(1, count + 1):
        kind = values.FACILITY_KINDS[(number - 1) % len(values.FACILITY_KINDS)]
        units = tuple((unit, rng.randint(*kind.beds_per_unit)) for unit in kind.units)
        facilities.append(Facility(f"F{number:04d}", number, kind, units))
    return facilities


def pick_target_sizes(count: int, rng: random.Random, size_scale: float = 1.0) -> list[int]:
    """Compressed sizes for `count` archives, times `size_scale`.

    round(1% of count) archives are log-uniform in 1.5-40 MB; the rest log-normal (median 150 KB) clipped to
    20 KB-1.5 MB. A fixed count of large ones (rather than a 1% coin per archive) keeps small runs comparable.
    """
    large = set(rng.sample(range(count), round(count * LARGE_SHARE)))
    sizes = []
    for index in range(count):
        if index in large:
            size = math.exp(rng.uniform(math.log(SMALL_MAX_BYTES), math.log(LARGE_MAX_BYTES)))
        else:
            size = min(
                max(rng.lognormvariate(math.log(MEDIAN_BYTES), SIZE_SIGMA), SMALL_MIN_BYTES), SMALL_MAX_BYTES
            )
        sizes.append(max(1, round(size * size_scale)))
    return sizes


def _packing(rng: random.Random, source: str, allowed: frozenset[Packing] = _ANY_PACKING) -> Packing:
    if source in CSV_SOURCES and "gzip" in allowed and rng.random() < GZIP_SHARE_OF_CSV:
        return "gzip"
    if allowed == {"gzip"}:
        return "gzip"
    return "aes" if rng.random() < AES_SHARE_OF_ZIPS else "zipcrypto"


def plan_archives(
    *, facilities: list[Facility], archives: int, seed: int, bad_rate: float, day: date, size_scale: float
) -> list[ArchivePlan]:
    """The day's archives in time order; bad ones get kinds round-robin and a source the kind applies to."""
    rng = random.Random(f"plan:{seed}")
    sources = rng.choices(SOURCES, weights=SOURCE_WEIGHTS, k=archives)
    chosen = rng.choices(facilities, weights=[facility.kind.volume for facility in facilities], k=archives)
    midnight = datetime(day.year, day.month, day.day)
    seconds = sorted(rng.randrange(86_400) for _ in range(archives))
    sizes = pick_target_sizes(archives, rng, size_scale)
    bad_indexes = sorted(rng.sample(range(archives), round(bad_rate * archives)))
    bad_by_index = {index: BAD_KINDS[turn % len(BAD_KINDS)] for turn, index in enumerate(bad_indexes)}
    seen: dict[str, int] = {}
    last_cut: dict[tuple[str, str], datetime] = {}
    plans = []
    for index in range(archives):
        source, bad = sources[index], bad_by_index.get(index)
        occurrence = 0
        if bad is not None:
            occurrence = seen.get(bad.name, 0)
            seen[bad.name] = occurrence + 1
            if bad.rotate_sources:
                source = sorted(bad.sources)[occurrence % len(bad.sources)]
            elif source not in bad.sources:
                source = rng.choice(sorted(bad.sources))
        packing = _packing(rng, source, bad.packings if bad else _ANY_PACKING)
        at = midnight + timedelta(seconds=seconds[index])
        since = last_cut.get((source, chosen[index].id))
        if source == BED and since is not None and at <= since < midnight + timedelta(seconds=86_399):
            # Census windows start at the facility's previous cut, so two cuts need different seconds.
            at = since + timedelta(seconds=1)
        last_cut[(source, chosen[index].id)] = at
        plans.append(
            ArchivePlan(
                index, source, chosen[index], at, packing, sizes[index], bad, occurrence, size_scale, since
            )
        )
    return plans


def _passwords(specs: Mapping[str, SourceSpec], plans: list[ArchivePlan], environ: dict[str, str]) -> dict:
    """Every (source, facility) password the zips need, resolved up front so a missing secret fails first."""
    passwords = {}
    for plan in plans:
        pair = (plan.source, plan.facility.id)
        if plan.packing == "gzip" or pair in passwords:
            continue
        ref = specs[plan.source].landing.password
        password = ref.resolve(plan.facility.id, environ) if ref else None
        if not password:
            names = " or ".join(ref.env_names(plan.facility.id)) if ref else "(no password reference)"
            raise MissingPasswordError(
                f"no archive password for source {plan.source!r} facility {plan.facility.id}: set {names}"
            )
        passwords[pair] = password
    return passwords


# ----------------------------------------------------------------------------------------- common values


def _hl7_ts(moment: datetime) -> str:
    return f"{moment:%Y%m%d%H%M%S}"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")  # 2026-11-26T08:15:00; faster than strftime


def _patient_id(rng: random.Random, facility: Facility) -> str:
    # A pool of 200,000 ids per facility, so patients recur across archives and sources.
    return f"{facility.number:04d}{rng.randrange(200_000):06d}"


@dataclass(frozen=True)
class _Person:
    id: str
    ssn: str
    family: str
    given: str
    birth: date
    sex: str
    street: str
    city: str
    state: str
    postal_code: str


def _person(rng: random.Random, facility: Facility, accented_share: float = 0.15) -> _Person:
    roll = rng.random()
    if roll < accented_share:
        family, given = rng.choice(values.ACCENTED_FAMILY_NAMES), rng.choice(values.ACCENTED_GIVEN_NAMES)
    elif roll < accented_share + 0.03:
        family, given = rng.choice(values.AMPERSAND_FAMILY_NAMES), rng.choice(values.GIVEN_NAMES)
    else:
        family, given = rng.choice(values.FAMILY_NAMES), rng.choice(values.GIVEN_NAMES)
    city, state, zip_prefix = rng.choice(values.CITIES)
    return _Person(
        id=_patient_id(rng, facility),
        # Area numbers 900-999 are never issued as SSNs, so these cannot be anyone's.
        ssn=f"9{rng.randrange(100):02d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10_000):04d}",
        family=family,
        given=given,
        birth=date(1930, 1, 1) + timedelta(days=rng.randrange(33_000)),
        sex=rng.choice(values.SEXES),
        street=f"{rng.randrange(1, 9999)} {rng.choice(values.STREETS)}",
        city=city,
        state=state,
        postal_code=f"{zip_prefix}{rng.randrange(100):02d}",
    )


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


# ------------------------------------------------------------------------------------------------------ CSV


def _csv_member(
    header: tuple[str, ...],
    rows: Iterator[list[str]],
    *,
    crlf: bool,
    bom: bool,
    latin1: bool,
    drop: str | None,
    victim: int,
    edit: tuple[str, str] | None = None,
) -> tuple[bytes, int]:
    """Write `rows` as CSV while they are generated (a member may be tens of MB); returns (bytes, rows).

    `drop` leaves a column out of the header and every row. The row numbered `victim` (0-based) gets one
    field too many, or with `edit` = (column, value) that value instead.
    """
    buffer = io.BytesIO()
    if bom and not latin1:
        buffer.write(codecs.BOM_UTF8)
    text = io.TextIOWrapper(buffer, encoding="latin-1" if latin1 else "utf-8", newline="")
    writer = csv.writer(text, lineterminator="\r\n" if crlf else "\n")
    position = header.index(drop) if drop is not None else None
    edited = header.index(edit[0]) if edit is not None else -1
    writer.writerow([name for name in header if name != drop])
    count = 0
    for count, row in enumerate(rows, start=1):
        if count - 1 == victim:
            if edit is None:
                row.append("unexpected")
            else:
                row[edited] = edit[1]
        if position is not None:
            del row[position]
        writer.writerow(row)
    text.flush()
    data = buffer.getvalue()
    text.detach()
    return data, count


def _lab_value(rng: random.Random, test: LabTest, latin1: bool) -> tuple[str, str, str, str]:
    """(test_name, value, reference_range, abnormal_flag) for one result."""
    roll = rng.random()
    if roll < 0.10:
        value, flag = test.high * rng.uniform(1.05, 1.8) + 0.01, "H"
    elif roll < 0.18 and test.low > 0:
        value, flag = test.low * rng.uniform(0.5, 0.95), "L"
    else:
        value, flag = rng.uniform(test.low, test.high), "N" if rng.random() < 0.75 else ""
    decimals = test.decimals
    reference = f"{test.low:.{decimals}f}-{test.high:.{decimals}f}"
    if rng.random() < 0.02:
        reference = rng.choice(values.AWKWARD_REFERENCE_RANGES)
    name = test.name
    if test.code in values.LATIN1_TEST_NAMES and (latin1 or rng.random() < 0.03):
        name = values.LATIN1_TEST_NAMES[test.code]
    return name, f"{value:.{decimals}f}", reference, flag


def _lab_rows(
    rng: random.Random, plan: ArchivePlan, member: int, budget: int, latin1: bool
) -> Iterator[list[str]]:
    """Orders of 1-8 tests; most results final (F), some preliminary then final, a few corrected after."""
    facility = plan.facility
    size = count = order = 0
    while size < budget or count < MIN_CSV_ROWS:
        order += 1
        order_id = f"ORD{plan.index:05d}{member:02d}{order:05d}"
        patient = _patient_id(rng, facility)
        # Ordered 4-12 h before the archive, so preliminary, final and corrected rows all fit before it.
        ordered = plan.at - timedelta(seconds=rng.randrange(4 * 3600, 12 * 3600))
        roll = rng.random()
        statuses = ("F",) if roll < 0.85 else ("P", "F") if roll < 0.97 else ("P", "F", "C")
        for test_index in rng.choice(values.LAB_PANELS):
            test = values.LAB_TESTS[test_index]
            when = ordered
            name, value, reference, flag = _lab_value(rng, test, latin1)
            for status in statuses:
                if status == "C":
                    name, value, reference, flag = _lab_value(rng, test, latin1)
                row = [facility.id, patient, order_id, test.code, name, value, test.unit, reference]
                row += [flag if status != "P" else "", status, _iso(when)]
                size += sum(map(len, row)) + 11
                count += 1
                yield row
                when += timedelta(minutes=rng.randint(10, 90))


def _census_window(plan: ArchivePlan, budget: int) -> tuple[datetime, datetime]:
    """[start, end) of the changes a census archive reports: about 20 s a row (15 min to 23 h), starting no
    earlier than the facility's previous census archive, so two archives never report the same bed at the
    same moment (an upsert batch must not hold two different rows for one key and time)."""
    span = timedelta(seconds=min(max(budget // 62 * 20, 900), 23 * 3600))
    start = plan.at - span
    if plan.since is not None and start < plan.since < plan.at:
        start = plan.since
    return start, plan.at


# Timestamp steps, coarsest first: a census member writes whole seconds unless its rows are denser than that.
_STEPS = (
    (timedelta(seconds=1), "seconds"),
    (timedelta(milliseconds=1), "milliseconds"),
    (timedelta(microseconds=1), "microseconds"),
)


def _grid(start: datetime, end: datetime, changes: int) -> tuple[datetime, timedelta, int, str]:
    """(first moment, step, steps that fit before `end`, isoformat timespec) of the coarsest step that gives
    a census and `changes` later rows a moment each; the first moment is `start` rounded up to a step."""
    for step, spec in _STEPS:
        first = start + (-(start - datetime.min) % step)
        slots = (end - first) // step
        if slots > changes:
            return first, step, slots, spec
    return first, step, slots, spec  # an absurdly dense member: moments repeat rather than fail


def _bed_rows(
    rng: random.Random, plan: ArchivePlan, budget: int, latin1: bool, window: tuple[datetime, datetime]
) -> Iterator[list[str]]:
    """A full census of every bed at the window's start, then status changes inside it until `budget`.

    Every row has its own moment (the census aside, where every bed differs), strictly before the window's
    end: (bed, updated_at) never repeats within an archive or across the facility's archives.
    """
    facility = plan.facility
    beds = []
    for position, (unit, count) in enumerate(facility.units):
        name = values.LATIN1_UNITS[position % len(values.LATIN1_UNITS)] if latin1 else unit
        beds += [(name, f"{unit}-{100 + bed // 2}{'AB'[bed % 2]}") for bed in range(count)]

    def row(unit: str, bed: str) -> list[str]:
        status = rng.choices(values.BED_STATUSES, cum_weights=_BED_STATUS_CUMULATIVE)[0]
        patient = _patient_id(rng, facility) if status == "occupied" else ""
        return [facility.id, unit, bed, status, patient, ""]

    census = [row(unit, bed) for unit, bed in beds]
    census_bytes = sum(sum(map(len, fields)) + 25 for fields in census)  # + separators and a timestamp
    changes = max(MIN_CSV_ROWS, -(-(budget - census_bytes) * len(census) // census_bytes))
    first, step, slots, spec = _grid(*window, changes)
    stamp = first.isoformat(timespec=spec)
    for fields in census:
        fields[5] = stamp
        yield fields
    for change in range(1, changes + 1):
        fields = row(*rng.choice(beds))
        # With slots > changes these are strictly increasing, above the census and below `end`.
        fields[5] = (first + step * (change * slots // (changes + 1))).isoformat(timespec=spec)
        yield fields


def _member_count(rng_choice: int, budget: int, member_cap: int) -> int:
    """The sender's usual member count, or more so that no member exceeds `member_cap` bytes of text."""
    return max(rng_choice, -(-budget // member_cap))


def _csv_payload(rng: random.Random, plan: ArchivePlan, budget: int, member_cap: int) -> Payload:
    bad = plan.bad.name if plan.bad else None
    if plan.packing == "gzip":
        count, budget = 1, min(budget, member_cap)
    else:
        count = _member_count(rng.choices((1, 2, 3), weights=(6, 2.5, 1.5))[0], budget, member_cap)
    drop = DROPPED_COLUMN[plan.source] if bad == "csv_missing_column" else None
    edit = SILVER_CSV_EDITS.get(bad) if bad else None
    # Census members cover consecutive parts of the archive's window, each starting with a full census.
    start, end = _census_window(plan, budget)
    bounds = [start + (end - start) * part / count for part in range(count + 1)]
    members, records, rejected = {}, 0, 0
    for number, share in enumerate(_split(budget, count), start=1):
        latin1 = rng.random() < 0.08
        if plan.source == LAB:
            header, rows = LAB_HEADER, _lab_rows(rng, plan, number, share, latin1)
        else:
            window = (bounds[number - 1], bounds[number])
            header, rows = BED_HEADER, _bed_rows(rng, plan, share, latin1, window)
        crlf, bom = rng.random() < 0.25, rng.random() < 0.10
        # One row of the first member gets an extra field (a field count the header does not allow), or for a
        # silver kind one value that bronze keeps as text and silver rejects.
        planted = bad == "csv_bad_row" or edit is not None
        victim = rng.randrange(MIN_CSV_ROWS) if planted and number == 1 else -1
        data, written = _csv_member(
            header, rows, crlf=crlf, bom=bom, latin1=latin1, drop=drop, victim=victim, edit=edit
        )
        members[f"{plan.stem}_{number}.csv"] = data
        records += written - (victim >= 0 and edit is None)
        rejected += victim >= 0 and edit is None
    return Payload(members, 0 if drop else records, rejected, 1 if edit is not None else 0)


# ------------------------------------------------------------------------------------------------------ HL7

# Characters with a meaning in HL7 v2 fields, written as escape sequences (\T\ is the `&` subcomponent mark).
_HL7_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"})


@dataclass(frozen=True)
class _AdtEvent:
    at: datetime
    trigger: str
    patient: _Person
    visit: str
    patient_class: str
    location: tuple[str, str, str]
    prior: tuple[str, str, str] | None
    admitted: datetime
    discharged: datetime | None
    attending: str  # PV1-7, already escaped
    details: tuple[str, ...]  # the visit's NK1/DG1/AL1/IN1 segments, which the parser skips


def _location(rng: random.Random, facility: Facility) -> tuple[str, str, str]:
    unit, beds = rng.choice(facility.units)
    bed = rng.randrange(beds)
    return unit, str(100 + bed // 2), "AB"[bed % 2]


def _visit_details(rng: random.Random, patient: _Person) -> tuple[str, tuple[str, ...]]:
    """PV1-7 (attending doctor) and the segments a real ADT feed carries beside PID and PV1."""
    esc = _hl7_escape
    attending = f"{rng.randrange(10**9, 10**10)}^{esc(rng.choice(values.FAMILY_NAMES))}^"
    attending += f"{esc(rng.choice(values.GIVEN_NAMES))}^^^Dr^^^NPI"
    code, relation = rng.choice(values.RELATIONSHIPS)
    kin = f"{esc(rng.choice(values.FAMILY_NAMES))}^{esc(rng.choice(values.GIVEN_NAMES))}"
    address = f"{esc(patient.street)}^^{esc(patient.city)}^{patient.state}^{patient.postal_code}"
    segments = [
        f"NK1|1|{kin}|{code}^{relation}^HL70063|{address}|^PRN^PH^^1^555^01{rng.randrange(10**5):05d}"
    ]
    for number, (icd, name) in enumerate(rng.sample(values.DIAGNOSES, rng.randint(1, 3)), start=1):
        segments.append(f"DG1|{number}||{icd}^{esc(name)}^I10||||{'A' if number == 1 else 'W'}")
    for number, (rxnorm, name) in enumerate(rng.sample(values.ALLERGIES, rng.randint(0, 2)), start=1):
        segments.append(f"AL1|{number}|DA|{rxnorm}^{esc(name)}^RXNORM|MO|RASH")
    payer, payer_name = rng.choice(values.PAYERS)
    segments.append(
        f"IN1|1|{payer}01^{esc(payer_name)} Plan|{payer}|{esc(payer_name)}|||||GRP{rng.randrange(10**6):06d}"
    )
    return attending, tuple(segments)


def _visit_events(rng: random.Random, plan: ArchivePlan, visit: str) -> list[_AdtEvent]:
    """A plausible visit: A01 (A04 for walk-in kinds), maybe A02/A08, usually A03; all before the archive."""
    facility, kind = plan.facility, plan.facility.kind
    patient = _person(rng, facility)
    when = plan.at - timedelta(seconds=rng.randrange(3600, 20 * 3600))
    admitted = when
    location = _location(rng, facility)
    patient_class = "E" if location[0] == "ED" else kind.patient_class
    attending, details = _visit_details(rng, patient)
    triggers = ["A01" if kind.admits else "A04"]
    triggers += rng.choices(("A02", "A08"), weights=(2, 1) if kind.admits else (0.2, 1), k=rng.randint(0, 2))
    if rng.random() < 0.8:
        triggers.append("A03")
    events, prior = [], None
    for trigger in triggers:
        if trigger == "A02":
            prior, location = location, _location(rng, facility)
        discharged = when if trigger == "A03" else None
        events.append(
            _AdtEvent(
                when,
                trigger,
                patient,
                visit,
                patient_class,
                location,
                prior,
                admitted,
                discharged,
                attending,
                details,
            )
        )
        step = rng.randrange(60, max(120, int((plan.at - when).total_seconds() / 2)))
        when = min(when + timedelta(seconds=step), plan.at)
    return events


def _adt_segments(
    event: _AdtEvent,
    plan: ArchivePlan,
    control_id: str,
    charset: str,
    app: str,
    *,
    zpv: bool,
    msh: bool = True,
) -> list[str]:
    esc = _hl7_escape
    patient, facility = event.patient, plan.facility.id
    segments = []
    if msh:
        structure = values.ADT_STRUCTURES[event.trigger]
        fields = ["MSH", "^~\\&", app, facility, "MEDLAKE", "MEDLAKE", _hl7_ts(event.at), ""]
        fields += [f"ADT^{event.trigger}^{structure}", control_id, "P", "2.5", "", "", "", "", "", charset]
        segments += ["|".join(fields).rstrip("|"), f"EVN|{event.trigger}|{_hl7_ts(event.at)}"]
    pid = ["PID", "1", "", f"{patient.id}^^^{facility}^MR~{patient.ssn}^^^SSA^SS", ""]
    pid += [f"{esc(patient.family)}^{esc(patient.given)}", "", f"{patient.birth:%Y%m%d}", patient.sex, "", ""]
    pid.append(f"{esc(patient.street)}^^{esc(patient.city)}^{patient.state}^{patient.postal_code}")
    segments.append("|".join(pid))
    pv1 = [""] * 46
    pv1[0:4] = ["PV1", "1", event.patient_class, "^".join(esc(part) for part in event.location)]
    if event.prior:
        pv1[6] = "^".join(esc(part) for part in event.prior)
    pv1[7], pv1[10], pv1[19], pv1[44] = event.attending, "MED", event.visit, _hl7_ts(event.admitted)
    if event.discharged:
        pv1[45] = _hl7_ts(event.discharged)
    segments.append("|".join(pv1).rstrip("|"))
    segments += event.details
    if zpv:
        arrival = "AMBULANCE" if event.patient_class == "E" else "WALKIN"
        segments.append(f"ZPV|1|{facility}|{event.visit}|ARRIVAL^{arrival}")
    return segments


def _hl7_escape(text: str) -> str:
    return text.translate(_HL7_ESCAPES)


def _adt_member(
    rng: random.Random, plan: ArchivePlan, number: int, budget: int, bad: str | None
) -> tuple[bytes, int]:
    """One `.txt` member of messages in time order, with this member's charset, terminators and envelope."""
    latin1 = rng.random() < 0.10
    charset = "8859/1" if latin1 else rng.choice(("", "", "UNICODE UTF-8"))
    style = rng.choices(("cr", "lf", "crlf", "mixed"), weights=(7, 1, 1, 1))[0]
    envelope = rng.random() < 0.15 and bad != "hl7_no_msh"
    app = rng.choice(values.SENDING_APPLICATIONS)
    events: list[_AdtEvent] = []
    size = visits = 0
    while size < budget or not events:
        visits += 1
        visit_events = _visit_events(rng, plan, f"V{plan.index:05d}{number:02d}{visits:05d}")
        events += visit_events
        size += 700 * len(visit_events)  # a rendered message is about 700 characters
    events.sort(key=lambda event: event.at)
    planted = bad in {"hl7_bad_message", "silver_bad_timestamp"}
    broken = rng.randrange(len(events)) if planted and number == 1 else -1
    segments: list[str] = []
    for ordinal, event in enumerate(events, start=1):
        control_id = f"{plan.facility.id}{plan.index:05d}{number:02d}{ordinal:06d}"
        message = _adt_segments(
            event, plan, control_id, charset, app, zpv=rng.random() < 0.2, msh=bad != "hl7_no_msh"
        )
        if ordinal - 1 == broken and bad == "hl7_bad_message":
            message[0] = "MSH|"  # no MSH-2 delimiters, no MSH-9 type, no MSH-10 control id
        elif ordinal - 1 == broken:
            fields = message[0].split("|")
            fields[6] = BAD_HL7_TS  # MSH-7 (fields[0] is the name, fields[1] MSH-2: MSH-1 is the separator)
            message[0] = "|".join(fields)
        segments += message
    if envelope:
        head = f"|^~\\&|{app}|{plan.facility.id}|MEDLAKE|MEDLAKE|{_hl7_ts(plan.at)}"
        segments = [f"FHS{head}", f"BHS{head}", *segments, f"BTS|{len(events)}", "FTS|1"]
    if style == "mixed":
        text = "".join(segment + rng.choice(("\r", "\n", "\r\n")) for segment in segments)
    else:
        terminator = {"cr": "\r", "lf": "\n", "crlf": "\r\n"}[style]
        text = terminator.join(segments) + terminator
    good = 0 if bad == "hl7_no_msh" else len(events) - (broken >= 0 and bad == "hl7_bad_message")
    return text.encode("latin-1" if latin1 else "utf-8"), good


def _adt_payload(rng: random.Random, plan: ArchivePlan, budget: int, member_cap: int) -> Payload:
    bad = plan.bad.name if plan.bad else None
    count = _member_count(rng.randint(1, 5), budget, member_cap)
    members, records = {}, 0
    for number, share in enumerate(_split(budget, count), start=1):
        data, good = _adt_member(rng, plan, number, share, bad)
        members[f"{plan.stem}_{number}.txt"] = data
        records += good
    return Payload(members, records, int(bad == "hl7_bad_message"), int(bad == "silver_bad_timestamp"))


# ------------------------------------------------------------------------------------------------------ C-CDA

_BILLION_LAUGHS = "\n".join(
    [
        "<!DOCTYPE ClinicalDocument [",
        '  <!ENTITY lol0 "lol">',
        *[f'  <!ENTITY lol{n} "{f"&lol{n - 1};" * 10}">' for n in range(1, 10)],
        "]>",
    ]
)
_EXTERNAL_ENTITY = '<!DOCTYPE ClinicalDocument [\n  <!ENTITY xxe SYSTEM "file:///etc/passwd">\n]>'
_LOINC = 'codeSystem="2.16.840.1.113883.6.1" codeSystemName="LOINC"'


def _section(template: str, code: str, title: str, rows: list[str], entries: list[str]) -> str:
    return (
        f'<component><section><templateId root="{template}" extension="2015-08-01"/>'
        f'<code code="{code}" {_LOINC}/><title>{title}</title>\n<text><table><tbody>\n'
        + "".join(rows)
        + "</tbody></table></text>\n"
        + "".join(entries)
        + "</section></component>\n"
    )


def _observation(code: str, name: str, value: str, unit: str, when: str) -> str:
    return (
        f'<entry typeCode="DRIV"><observation classCode="OBS" moodCode="EVN">'
        f'<code code="{code}" {_LOINC} displayName={quoteattr(name)}/><statusCode code="completed"/>'
        f'<effectiveTime value="{when}"/><value xsi:type="PQ" value="{value}" unit={quoteattr(unit)}/>'
        "</observation></entry>\n"
    )


def _document(rng: random.Random, plan: ArchivePlan, target: int, latin1: bool, bad: str | None) -> bytes:
    """One C-CDA document of about `target` bytes (the results section grows to fit)."""
    facility = plan.facility
    person = _person(rng, facility, accented_share=1.0 if latin1 else 0.15)
    doc_type = rng.choice(values.DOCUMENT_TYPES)
    effective = plan.at - timedelta(seconds=rng.randrange(600, 48 * 3600))
    document_id = f"{rng.getrandbits(128):032x}"
    gender = {"F": "F", "M": "M"}.get(person.sex, "UN")
    encoding = "ISO-8859-1" if latin1 else "UTF-8"
    title = f"{doc_type.name} - {escape(person.family)}"
    if bad == "xml_entity_bomb":
        title = "&lol9;"
    elif bad == "xml_external_entity":
        title = "&xxe;"
    org_root = f"2.16.840.1.113883.19.5.{facility.number}"
    head = [
        f'<?xml version="1.0" encoding="{encoding}"?>\n',
        _BILLION_LAUGHS + "\n" if bad == "xml_entity_bomb" else "",
        _EXTERNAL_ENTITY + "\n" if bad == "xml_external_entity" else "",
        '<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:sdtc="urn:hl7-org:sdtc" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n',
        '<realmCode code="US"/><typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>\n',
        '<templateId root="2.16.840.1.113883.10.20.22.1.1" extension="2015-08-01"/>\n',
        f'<id root="{org_root}" extension="{document_id}"/>\n',
        f'<code code="{doc_type.code}" {_LOINC} displayName="{doc_type.name}"/>\n',
        f"<title>{title}</title>\n",
        f'<effectiveTime value="{_hl7_ts(effective)}"/>\n',
        '<confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/><languageCode code="en-US"/>\n',
        "<recordTarget><patientRole>\n",
        f'<id root="{org_root}.1" extension="{person.id}"/>\n',
        f'<id root="2.16.840.1.113883.4.1" extension="{person.ssn}"/>\n',
        f'<addr use="HP"><streetAddressLine>{escape(person.street)}</streetAddressLine>'
        f"<city>{escape(person.city)}</city><state>{person.state}</state>"
        f"<postalCode>{person.postal_code}</postalCode><country>US</country></addr>\n",
        f'<telecom use="HP" value="tel:+1-555-01{rng.randrange(100):02d}"/>\n',
        f'<patient><name use="L"><given>{escape(person.given)}</given>'
        f"<family>{escape(person.family)}</family></name>\n"
        f'<administrativeGenderCode code="{gender}" codeSystem="2.16.840.1.113883.5.1"/>\n'
        f'<birthTime value="{person.birth:%Y%m%d}"/></patient>\n',
        "</patientRole></recordTarget>\n",
        f'<author><time value="{_hl7_ts(effective)}"/><assignedAuthor><id root="2.16.840.1.113883.4.6" '
        f'extension="{rng.randrange(10**9, 10**10)}"/></assignedAuthor></author>\n',
        f'<custodian><assignedCustodian><representedCustodianOrganization><id root="{org_root}"/>'
        f"<name>Facility {facility.id}</name></representedCustodianOrganization>"
        "</assignedCustodian></custodian>\n",
        "<component><structuredBody>\n",
    ]
    problems = rng.sample(values.PROBLEMS, rng.randint(1, 4))
    medications = rng.sample(values.MEDICATIONS, rng.randint(1, 4))
    allergy = rng.choice(values.ALLERGIES)
    when = _hl7_ts(effective)
    body = [
        _section(
            "2.16.840.1.113883.10.20.22.2.5.1",
            "11450-4",
            "Problems",
            [f"<tr><td>{name}</td><td>SNOMED {code}</td><td>Active</td></tr>\n" for code, name in problems],
            [],
        ),
        _section(
            "2.16.840.1.113883.10.20.22.2.1.1",
            "10160-0",
            "Medications",
            [f"<tr><td>{name}</td><td>RxNorm {code}</td><td>daily</td></tr>\n" for code, name in medications],
            [],
        ),
        _section(
            "2.16.840.1.113883.10.20.22.2.6.1",
            "48765-2",
            "Allergies",
            [f"<tr><td>{allergy[1]}</td><td>RxNorm {allergy[0]}</td><td>rash</td></tr>\n"],
            [],
        ),
    ]
    vitals_rows, vitals_entries = [], []
    for code, name, unit, low, high in values.VITALS:
        value = f"{rng.uniform(low, high):.1f}"
        vitals_rows.append(f"<tr><td>{name}</td><td>{value} {escape(unit)}</td></tr>\n")
        vitals_entries.append(_observation(code, name, value, unit, when))
    body.append(
        _section("2.16.840.1.113883.10.20.22.2.4.1", "8716-3", "Vital Signs", vitals_rows, vitals_entries)
    )
    tail = "</structuredBody></component>\n</ClinicalDocument>\n"
    size = sum(map(len, head)) + sum(map(len, body)) + len(tail) + 400
    result_rows, result_entries = [], []
    while size < target:
        test = rng.choice(values.LAB_TESTS)
        name, value, reference, flag = _lab_value(rng, test, latin1)
        row = f"<tr><td>{escape(name)}</td><td>{value} {escape(test.unit)}</td><td>{escape(reference)}</td>"
        row += f"<td>{flag}</td></tr>\n"
        entry = _observation(test.code, name, value, test.unit, when)
        result_rows.append(row)
        result_entries.append(entry)
        size += len(row) + len(entry)
    body.append(
        _section("2.16.840.1.113883.10.20.22.2.3.1", "30954-2", "Results", result_rows, result_entries)
    )
    data = "".join([*head, *body, tail]).encode("latin-1" if latin1 else "utf-8")
    return data[: len(data) // 2] if bad == "xml_malformed" else data


def _document_payload(rng: random.Random, plan: ArchivePlan, budget: int) -> Payload:
    bad = plan.bad.name if plan.bad else None
    count = min(max(round(budget / 15_000), DOCS_PER_ARCHIVE[0]), DOCS_PER_ARCHIVE[1])
    each = min(max(budget // count, DOC_BYTES[0]), DOC_BYTES[1])
    broken = (
        rng.randrange(count) if bad in {"xml_entity_bomb", "xml_external_entity", "xml_malformed"} else -1
    )
    members = {}
    for number in range(count):
        target = min(max(round(each * rng.uniform(0.7, 1.3)), DOC_BYTES[0]), DOC_BYTES[1])
        latin1 = rng.random() < 0.08
        members[f"{plan.stem}_{number + 1:03d}.xml"] = _document(
            rng, plan, target, latin1, bad if number == broken else None
        )
    return Payload(members, count - (broken >= 0), 1 if broken >= 0 else 0)


# ------------------------------------------------------------------------------------------------ packing


def _build_payload(rng: random.Random, plan: ArchivePlan, limits: ArchiveLimits) -> Payload:
    """The archive's members: text of about target size x expected ratio, within 90% of the reader's total
    limit (a 40 MB lab archive is ~460 MB of CSV; its limit is 512 MiB) and half its member limit."""
    budget = min(
        round(plan.target_bytes * EXPECTED_RATIO[plan.source]), limits.max_total_uncompressed_bytes * 9 // 10
    )
    member_cap = min(MAX_MEMBER_TEXT, limits.max_member_bytes // 2)
    if plan.source in CSV_SOURCES:
        return _csv_payload(rng, plan, budget, member_cap)
    if plan.source == ADT:
        return _adt_payload(rng, plan, budget, member_cap)
    return _document_payload(rng, plan, budget)


def _zip_date_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _pack(plan: ArchivePlan, members: dict[str, bytes], password: str | None) -> bytes:
    if plan.packing == "gzip":
        ((name, data),) = members.items()
        return gzip_bytes(data, name=name)
    assert password is not None
    if plan.packing == "aes":
        return zip_aes(members, password, date_time=_zip_date_time(plan.at), salt_seed=plan.key.encode())
    return zip_zipcrypto(members, password, mtime=plan.at.replace(tzinfo=UTC))


def _refuses_password(data: bytes, password: str) -> bool:
    """True when every member fails the password check (ZipCrypto's 1-byte check passes 1 time in 256)."""
    with pyzipper.AESZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            try:
                with archive.open(info, pwd=password.encode("utf-8")):
                    return False
            except RuntimeError:
                continue
    return True


def _largest_member_data(data: bytes) -> tuple[int, int]:
    """(offset, length) of the largest member's stored data, read from its local header."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = max(archive.infolist(), key=lambda item: item.compress_size)
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _bad_archive(rng: random.Random, plan: ArchivePlan, payload: Payload, password: str | None) -> bytes:
    """The bytes of an archive-level bad file (everything but the record-level kinds)."""
    kind = plan.bad.name if plan.bad else ""
    members = payload.members
    if kind == "wrong_password":
        assert password is not None
        for attempt in range(1, 100):
            wrong = f"{password}-wrong-{attempt}"
            data = _pack(plan, members, wrong)
            if _refuses_password(data, password):
                return data
        raise RuntimeError(f"{plan.key}: no wrong password found that fails every member's check")
    if kind in {"corrupt_zip", "truncated_zip"}:
        data = _pack(plan, members, password)
        offset, length = _largest_member_data(data)
        middle = offset + length // 2
        if kind == "truncated_zip":
            return data[:middle]
        width = max(1, min(32, length // 4))
        return (
            data[:middle]
            + bytes(byte ^ 0x5A for byte in data[middle : middle + width])
            + data[middle + width :]
        )
    if kind == "truncated_gzip":
        data = _pack(plan, members, None)
        return data[: len(data) // 2]
    if kind == "zip_bomb":
        size = max(BOMB_MIN_BYTES, round(BOMB_BYTES * min(1.0, plan.size_scale)))
        name = f"{plan.stem}_1{MEMBER_SUFFIX[plan.source]}"
        return zip_bomb(
            password, size, name=name, date_time=_zip_date_time(plan.at), salt_seed=plan.key.encode()
        )
    if kind in {"path_traversal", "absolute_path"}:
        first = next(iter(members))
        unsafe = f"../{first}" if kind == "path_traversal" else f"/etc/{first}"
        items = list(members.items())
        items.insert(rng.randrange(len(items) + 1), (unsafe, members[first]))
        return zip_with_raw_names(
            dict(items), password, date_time=_zip_date_time(plan.at), salt_seed=plan.key.encode()
        )
    if kind == "empty_archive":
        return zip_plain({})
    raise ValueError(f"not an archive-level bad kind: {kind!r}")


def _no_source(rng: random.Random, plan: ArchivePlan, payload: Payload) -> tuple[str, bytes]:
    """Alternately a zip in a folder no source claims and a `.rar` in a real source's folder."""
    if plan.occurrence % 2 == 0:
        key = plan.key.replace(f"landing/{plan.source}/", "landing/unknown_feed/", 1)
        key = key.replace(f"/{plan.source}_", "/unknown_feed_", 1)
        return key.removesuffix(".csv.gz").removesuffix(".zip") + ".zip", zip_plain(payload.members)
    key = plan.key.removesuffix(".csv.gz").removesuffix(".zip") + ".rar"
    # A RAR 5 signature and filler: the suffix alone must send it to quarantine, never a reader.
    return key, b"Rar!\x1a\x07\x01\x00" + rng.randbytes(2048)


def build_archive(
    plan: ArchivePlan, seed: int, password: str | None, limits: ArchiveLimits | None = None
) -> Outcome:
    """One planned archive: its key, bytes and what a correct pipeline must do with it."""
    rng = random.Random(f"archive:{seed}:{plan.index}")
    payload = _build_payload(rng, plan, limits or ArchiveLimits())
    bad = plan.bad
    level = bad.level if bad else None
    if level == "landing":
        key, data = _no_source(rng, plan, payload)
        return Outcome(key, None, data, "rar" if key.endswith(".rar") else "plain", quarantined=True, bad=bad)
    if level == "archive":
        data = _bad_archive(rng, plan, payload, password)
        packing = "plain" if bad and bad.name == "empty_archive" else plan.packing
        return Outcome(plan.key, plan.source, data, packing, quarantined=True, bad=bad)
    data = _pack(plan, payload.members, password)
    if level == "member":
        return Outcome(plan.key, plan.source, data, plan.packing, quarantined=True, bad=bad)
    return Outcome(
        plan.key,
        plan.source,
        data,
        plan.packing,
        len(payload.members),
        payload.records,
        payload.rejected,
        payload.silver_rejected,
        bad=bad,
    )


# ------------------------------------------------------------------------------------------------ manifest


def _empty_counts() -> dict[str, int]:
    keys = (
        "archives",
        "archives_loaded",
        "archives_quarantined",
        "members",
        "records",
        "rejected_records",
        "silver_rejected_records",
        "bytes",
    )
    return dict.fromkeys(keys, 0)


def generate_feeds(
    put: Put,
    *,
    facilities: int = 8,
    archives: int = 200,
    seed: int = 0,
    bad_rate: float = 0.0,
    day: date,
    size_scale: float = 1.0,
    environ: Mapping[str, str] | None = None,
    sources_dir: Path | None = None,
) -> dict:
    """Generate a landing tree through `put(key, data)` and return its manifest (JSON-serializable).

    Passwords come from `environ` (default `os.environ`) through each source's password reference, so
    `MEDLAKE_ARCHIVE_PASSWORD__F0003` overrides `MEDLAKE_ARCHIVE_PASSWORD` for F0003. Raises
    `MissingPasswordError` before writing anything when a zip's facility has no password.
    """
    if facilities < 1 or archives < 0:
        raise ValueError("need at least one facility and a non-negative number of archives")
    if not 0.0 <= bad_rate <= 1.0:
        raise ValueError(f"bad_rate must be between 0 and 1, got {bad_rate}")
    if size_scale <= 0:
        raise ValueError(f"size_scale must be positive, got {size_scale}")
    specs = load_sources(sources_dir or DEFAULT_SOURCES_DIR)
    missing = sorted(set(SOURCES) - set(specs))
    if missing:
        raise ValueError(f"the source metadata has no {missing}: the generator writes these sources")
    env = dict(os.environ if environ is None else environ)
    sites = make_facilities(facilities, seed)
    plans = plan_archives(
        facilities=sites, archives=archives, seed=seed, bad_rate=bad_rate, day=day, size_scale=size_scale
    )
    passwords = _passwords(specs, plans, env)

    per_source = {source: _empty_counts() for source in SOURCES}
    totals = _empty_counts()
    bad_files, listing = [], []
    for plan in plans:
        password = passwords.get((plan.source, plan.facility.id))
        outcome = build_archive(plan, seed, password, specs[plan.source].landing.limits)
        put(outcome.key, outcome.data)
        loaded = not outcome.quarantined
        row = {
            "archives": 1,
            "archives_loaded": int(loaded),
            "archives_quarantined": int(not loaded),
            "members": outcome.members,
            "records": outcome.records,
            "rejected_records": outcome.rejected,
            "silver_rejected_records": outcome.silver_rejected,
            "bytes": len(outcome.data),
        }
        for counts in ([per_source[outcome.source]] if outcome.source else []) + [totals]:
            for name, value in row.items():
                counts[name] += value
        expect = "quarantined" if outcome.quarantined else "loaded"
        listing.append(
            {
                "key": outcome.key,
                "source": outcome.source,
                "facility": plan.facility.id,
                "packing": outcome.packing,
                "bytes": len(outcome.data),
                "members": outcome.members,
                "records": outcome.records,
                "rejected_records": outcome.rejected,
                "silver_rejected_records": outcome.silver_rejected,
                "expect": expect,
                "bad": outcome.bad.name if outcome.bad else None,
            }
        )
        if outcome.bad is not None:
            bad_files.append(
                {
                    "key": outcome.key,
                    "source": outcome.source,
                    "kind": outcome.bad.name,
                    "stage": outcome.bad.stage,
                    "rule": outcome.bad.rule,
                    "expect": expect,
                    # The records rejected at `stage`: bronze's quarantine rows, or silver's.
                    "rejected_records": outcome.silver_rejected
                    if outcome.bad.stage == "silver"
                    else outcome.rejected,
                }
            )
    totals["bad_files"] = len(bad_files)
    return {
        "seed": seed,
        "day": day.isoformat(),
        "facilities": facilities,
        "facility_kinds": {site.id: site.kind.name for site in sites},
        "size_scale": size_scale,
        "bad_rate": bad_rate,
        "sources": per_source,
        "bad_files": bad_files,
        "totals": totals,
        "archives": listing,
    }


def _write_atomically(path: Path, data: bytes, scratch: Path) -> None:
    """Write to a temporary file outside `landing/`, then rename: a sensor never lists half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=scratch, delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


def write_feeds(out: Path, **kwargs) -> dict:
    """`generate_feeds` into the folder `out` (`out/<key>`) plus `out/manifest.json`; returns the manifest."""
    out = Path(out)
    scratch = out / ".generate-tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        manifest = generate_feeds(lambda key, data: _write_atomically(out / key, data, scratch), **kwargs)
        text = json.dumps(manifest, indent=2) + "\n"
        _write_atomically(out / "manifest.json", text.encode("utf-8"), scratch)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return manifest
