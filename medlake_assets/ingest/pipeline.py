"""From one archive's bytes to bronze rows and rejects: the pure core of ingestion."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

import pyarrow as pa

from medlake_assets.ingest.archives import read_members
from medlake_assets.ingest.parsers import parse_member
from medlake_assets.ingest.types import ArchiveRejected, MemberRejected, RecordReject
from medlake_assets.spec import SourceSpec


@dataclass(frozen=True)
class ArchiveContext:
    """Where an archive came from: everything its lineage columns need."""

    key: str
    facility: str
    landing_day: date
    batch_id: str
    ingested_at: datetime


@dataclass
class ArchiveResult:
    context: ArchiveContext
    members: int = 0
    columns: dict[str, list[str | None]] = field(default_factory=dict)
    member_names: list[str] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)
    rejects: list[RecordReject] = field(default_factory=list)
    rule: str | None = None
    reason: str | None = None

    @property
    def quarantined(self) -> bool:
        return self.rule is not None

    @property
    def records(self) -> int:
        return len(self.ordinals)


def process_archive(
    data: bytes,
    context: ArchiveContext,
    spec: SourceSpec,
    *,
    password: str | None,
    engine: str = "libarchive",
) -> ArchiveResult:
    """Unpack and parse one archive; never raises for bad input.

    The whole archive is quarantined when it cannot be opened or when none of its members yields a record
    and at least one was rejected; otherwise good records load and bad ones become rejects.
    """
    result = ArchiveResult(context=context, columns={name: [] for name in spec.column_names()})
    landing = spec.landing
    try:
        members = read_members(
            data,
            name=context.key,
            accepted=landing.archives,
            password=password,
            member_regex=landing.member_regex,
            limits=landing.limits,
            engine=engine,
        )
    except ArchiveRejected as rejected:
        result.rule, result.reason = rejected.rule, rejected.reason
        return result
    result.members = len(members)
    for member in members:
        try:
            parsed = parse_member(member, spec)
        except MemberRejected as rejected:
            result.rejects.append(
                RecordReject(member.name, None, rejected.line, rejected.rule, rejected.reason, None)
            )
            continue
        for name, values in parsed.columns.items():
            result.columns[name].extend(values)
        result.member_names.extend([member.name] * parsed.record_count)
        result.ordinals.extend(parsed.ordinals)
        result.rejects.extend(parsed.rejects)
    if not result.ordinals and result.rejects:
        first = result.rejects[0]
        result.rule = first.rule
        result.reason = f"no record could be loaded; first problem in member {first.member!r}: {first.reason}"
    return result


def bronze_rows(results: list[ArchiveResult], schema: pa.Schema, spec: SourceSpec) -> pa.Table:
    """One Arrow table of the loaded archives' records, with lineage columns, in the bronze schema."""
    loaded = [result for result in results if not result.quarantined]
    arrays: dict[str, list] = {name: [] for name in schema.names}
    for result in loaded:
        count = result.records
        context = result.context
        for name in spec.column_names():
            arrays[name].extend(result.columns[name])
        arrays["_archive"].extend([context.key] * count)
        arrays["_member"].extend(result.member_names)
        arrays["_record"].extend(result.ordinals)
        arrays["_facility"].extend([context.facility] * count)
        arrays["_landing_day"].extend([context.landing_day] * count)
        arrays["_ingested_at"].extend([context.ingested_at] * count)
        arrays["_batch"].extend([context.batch_id] * count)
    return pa.Table.from_pydict(arrays, schema=schema)


def reject_rows(results: list[ArchiveResult], schema: pa.Schema) -> pa.Table:
    """Rejected records of loaded archives for `quarantine.<source>`, stage `bronze`."""
    rows: dict[str, list] = {name: [] for name in schema.names}
    for result in results:
        if result.quarantined:
            continue
        context = result.context
        for reject in result.rejects:
            rows["_archive"].append(context.key)
            rows["_member"].append(reject.member)
            rows["_record"].append(reject.record)
            rows["_line"].append(reject.line)
            rows["_facility"].append(context.facility)
            rows["_landing_day"].append(context.landing_day)
            rows["_ingested_at"].append(context.ingested_at)
            rows["_batch"].append(context.batch_id)
            rows["stage"].append("bronze")
            rows["rule"].append(reject.rule)
            rows["reason"].append(reject.reason)
            rows["raw"].append(reject.raw)
    return pa.Table.from_pydict(rows, schema=schema)
