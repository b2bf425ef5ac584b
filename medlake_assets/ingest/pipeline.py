"""From one archive's bytes to bronze rows and rejects: the pure core of ingestion."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa

from medlake_assets.ingest.archives import unpack
from medlake_assets.ingest.parsers import parse_member_pieces
from medlake_assets.ingest.parsers.csv import ArrowMember
from medlake_assets.ingest.types import ArchiveRejected, MemberRejected, ParsedMember, RecordReject
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
    """Files in the archive: the members read and the ones not matching `member_pattern`."""
    table: pa.Table | None = None
    """The loaded records: the declared columns (large_string), then `_member` and `_record` (None when they
    went to a sink piece by piece, see `process_archive`)."""
    rejects: list[RecordReject] = field(default_factory=list)
    rule: str | None = None
    reason: str | None = None
    records: int = 0

    @property
    def quarantined(self) -> bool:
        return self.rule is not None


RecordSink = Callable[[pa.Table], None]
"""Takes an archive's records a piece at a time (the `ArchiveResult.table` columns), e.g. to write them."""


def process_archive(
    data: bytes,
    context: ArchiveContext,
    spec: SourceSpec,
    *,
    password: str | None,
    engine: str = "libarchive",
    sink: RecordSink | None = None,
) -> ArchiveResult:
    """Unpack and parse one archive; never raises for bad input.

    The whole archive is quarantined when it cannot be opened or when none of its members yields a record
    and at least one was rejected; otherwise good records load and bad ones become rejects.

    With a `sink`, the records go to it a piece at a time as they are parsed (a large CSV member in pieces
    of about 8 MiB of text; small members' records together, `PIECE_BYTES`) and a member's text is let
    go once parsed, so memory holds the archive's unpacked text and one piece, not the whole parse. A
    quarantined archive has sent nothing (no record).
    """
    result = ArchiveResult(context=context)
    landing = spec.landing
    try:
        unpacked = unpack(
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
    members = unpacked.members
    unmatched_names = unpacked.unmatched
    del unpacked
    # Every file the archive holds, read or not: the unread ones are named in quarantine below.
    result.members = len(members) + len(unmatched_names)
    names = spec.column_names()
    whole: list[pa.Table] = []  # without a sink: the archive's one table, joined once at the end
    pending = (
        _Pieces(names, sink, PIECE_BYTES) if sink is not None else _Pieces(names, whole.append, math.inf)
    )
    members.reverse()  # popped in archive order, so each member's text is freed once parsed
    while members:
        member = members.pop()
        sent = False  # whether a piece of this member's records went on already
        try:
            for parsed in parse_member_pieces(member, spec):
                sent = True
                result.rejects.extend(parsed.rejects)
                result.records += parsed.record_count
                pending.add(parsed, member.name)
                del parsed  # converted: a large HL7 member's lists (hundreds of MB) go before the next member
        except MemberRejected as rejected:
            result.rejects.append(
                RecordReject(member.name, None, rejected.line, rejected.rule, rejected.reason, None)
            )
        except MemoryError:
            raise
        except Exception as error:
            if sent:  # part of the member is on its way to bronze: fail the run rather than load a part
                raise
            # A parser fault on these bytes (a bug, not a known kind of bad input) costs this member only,
            # not the batch's run. Named by its type and place: an exception's message may quote values.
            result.rejects.append(RecordReject(member.name, None, None, "member.parse_failed", _fault(error)))
        del member
    pending.send()
    if sink is None:
        result.table = whole[0] if whole else _concat_tables([], names)
    if not result.records and result.rejects:
        first = result.rejects[0]
        result.rule = first.rule
        result.reason = f"no record could be loaded; first problem in member {first.member!r}: {first.reason}"
        result.table = None
    # Files of the archive the source does not read are named in quarantine, never dropped unseen.
    unmatched = f"the file does not match the source's member_pattern {landing.member_pattern!r}; not read"
    result.rejects.extend(
        RecordReject(name, None, None, "archive.unmatched_member", unmatched) for name in unmatched_names
    )
    return result


def _fault(error: Exception) -> str:
    frame = traceback.extract_tb(error.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno}"
    return f"the parser failed on this member ({type(error).__name__} at {where}); the member was not loaded"


PIECE_BYTES = 1024**2
"""Arrow bytes of small members' records (an XML member is one record) sent to a sink together as one
table. A table per record cost far more than its values: a surge batch of 309 XML archives (26,793
records) peaked at 986 MB in its bronze step and left 522 MB in the process, against 351 and 297 MB sent
together (docs/benchmarks.md, "Small members sent on together")."""

LISTED_RECORDS = 8192
"""Records parsed into lists (HL7 messages, XML documents) held before they are converted to Arrow at once
(an archive's C-CDA documents together); a member of as many is converted alone, its lists not copied (the
bench-memory ADT archives peaked 140 MB higher with every member's lists copied)."""


class _Pieces:
    """An archive's parsed records on their way to `send`: a piece of `limit` bytes or more (a CSV member's
    8 MiB of text) goes alone, smaller ones are joined into tables of about `limit` bytes first. Records
    parsed into lists (HL7, XML) are converted to Arrow `LISTED_RECORDS` at a time, not a member at a time:
    a one-record C-CDA member's conversion cost more than its values (a sixth of parsing the member)."""

    def __init__(self, names: list[str], send: Callable[[pa.Table], None], limit: float) -> None:
        self._names, self._send, self._limit = names, send, limit
        self._pieces: list[pa.Table] = []
        self._bytes = 0
        self._listed: dict[str, list] = {name: [] for name in [*names, "_member", "_record"]}

    def add(self, parsed: ArrowMember | ParsedMember, member: str) -> None:
        """One member's records (or a piece of them), in archive order."""
        if not parsed.record_count:
            return
        if isinstance(parsed, ParsedMember) and parsed.record_count < LISTED_RECORDS:
            for name in self._names:
                self._listed[name] += parsed.columns[name]
            self._listed["_member"] += [member] * parsed.record_count
            self._listed["_record"] += parsed.ordinals
            if len(self._listed["_record"]) >= LISTED_RECORDS:
                self._convert()
            return
        self._convert()  # the records held go first
        if isinstance(parsed, ParsedMember):  # a large member alone: its lists are not copied into ours
            self._add_listed(parsed.columns, [member] * parsed.record_count, parsed.ordinals)
            return
        arrays = [parsed.columns[name] for name in self._names]
        self._add([*arrays, _repeat(member, pa.large_string(), parsed.record_count), parsed.ordinals])

    def _convert(self) -> None:
        if self._listed["_record"]:
            listed = self._listed
            self._listed = {name: [] for name in listed}
            self._add_listed(listed, listed["_member"], listed["_record"])

    def _add_listed(self, columns: Mapping[str, list], members: list[str], ordinals: list[int]) -> None:
        arrays = [pa.array(columns[name], pa.large_string()) for name in self._names]
        self._add([*arrays, pa.array(members, pa.large_string()), pa.array(ordinals, pa.int64())])

    def _add(self, arrays: list[pa.Array]) -> None:
        """A piece: the declared columns, then `_member` and `_record`."""
        piece = pa.Table.from_arrays(arrays, names=[*self._names, "_member", "_record"])
        # Not `nbytes`: it looks for buffers shared between columns, 50 us a call for a one-record member's
        # piece (a C-CDA document), 7% of parsing it. A shared buffer counted twice only sends a piece sooner.
        size = piece.get_total_buffer_size()
        if size >= self._limit:
            self._flush()
            self._send(piece)
            return
        self._pieces.append(piece)
        self._bytes += size
        if self._bytes >= self._limit:
            self._flush()

    def send(self) -> None:
        """Everything held goes on (at the archive's end)."""
        self._convert()
        self._flush()

    def _flush(self) -> None:
        if self._pieces:
            pieces = self._pieces
            self._pieces, self._bytes = [], 0
            self._send(pieces[0] if len(pieces) == 1 else _concat_tables(pieces, self._names))


def _concat_tables(tables: list[pa.Table], names: list[str]) -> pa.Table:
    """One table of the pieces, each column one contiguous array (as the parsers' arrays were)."""
    if not tables:
        empty = [pa.array([], pa.large_string()) for _ in [*names, "_member"]] + [pa.array([], pa.int64())]
        return pa.Table.from_arrays(empty, names=[*names, "_member", "_record"])
    return pa.concat_tables(tables).combine_chunks()


def _repeat(value: object, kind: pa.DataType, count: int) -> pa.Array:
    return pa.repeat(pa.scalar(value, kind), count)


@dataclass(frozen=True)
class ArchiveWork:
    """One archive to process: what `process_archive` takes, picklable for a worker process."""

    # Neither the archive's bytes (PHI) nor its password may show in a repr, e.g. in a traceback.
    data: bytes = field(repr=False)
    context: ArchiveContext
    spec: SourceSpec
    password: str | None = field(repr=False)
    engine: str = "libarchive"


def process_work(work: ArchiveWork, sink: RecordSink | None = None) -> ArchiveResult:
    """`process_archive` of one work item (what a pool worker runs)."""
    return process_archive(
        work.data, work.context, work.spec, password=work.password, engine=work.engine, sink=sink
    )


def bronze_rows(results: list[ArchiveResult], schema: pa.Schema, spec: SourceSpec) -> pa.Table:
    """One Arrow table of the loaded archives' records, with lineage columns, in the bronze schema."""
    tables = [
        with_lineage(result.table, result.context, schema)
        for result in results
        if not result.quarantined and result.table is not None and result.records
    ]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def with_lineage(table: pa.Table, context: ArchiveContext, schema: pa.Schema) -> pa.Table:
    """An archive's records (or a piece of them) with its lineage columns, in the bronze schema."""
    lineage = {
        "_archive": context.key,
        "_facility": context.facility,
        "_landing_day": context.landing_day,
        "_ingested_at": context.ingested_at,
        "_batch": context.batch_id,
    }
    arrays = [
        table.column(name) if name in table.column_names else _repeat(lineage[name], kind, table.num_rows)
        for name, kind in zip(schema.names, schema.types, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


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
