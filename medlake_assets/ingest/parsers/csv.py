"""Parse one delimited-text member into columnar string lists, as received (bronze).

The standard library's C reader does the splitting and quoting; this module only matches the header to the
declared columns, counts records and physical lines, and turns bad rows into record-level rejects.

`parse_csv_arrow` (the ingest path) first tries Polars' native reader, which splits a well-formed member many
times faster and straight into Arrow; on anything it cannot prove it reads exactly as the standard library
does (ragged or blank lines, stray quotes, lone carriage returns, a reader error), it falls back to the
standard library path, so values, ordinals and rejects are the same either way.

`parse_csv_arrow_chunks` reads a large member in pieces of about `chunk_chars` characters, cut only at line
ends outside quoted fields, so a run holds one piece's parse rather than the whole member's (a 40 MB archive
is ~460 MB of CSV). Each piece goes through the same two paths with the member's header layout; ordinals,
record numbers and lines continue across pieces, so the pieces together are exactly the whole parse.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import compress
from operator import itemgetter
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from medlake_assets.ingest.text import (
    BYTE_ORDER_MARKS,
    CONTROL_CHARACTER,
    control_character_reason,
    decode_text,
    has_control_characters,
)
from medlake_assets.ingest.types import MemberRejected, ParsedMember, RecordReject
from medlake_assets.spec.models import ColumnSpec, CsvFormat

if TYPE_CHECKING:
    from _csv import Reader

    import polars as pl


def parse_csv(
    data: bytes,
    *,
    member: str,
    columns: Sequence[ColumnSpec],
    fmt: CsvFormat,
    encoding: str,
    fallbacks: Sequence[str],
) -> ParsedMember:
    """Parse a CSV member; each column's `source` is a header name, or a 1-based position without a header.

    - Header names match after trimming whitespace, case-insensitively; undeclared header columns are ignored.
    - A declared column absent from the file: `MemberRejected("csv.missing_column")` if it is not nullable,
      otherwise all None. A declared header name present twice: `MemberRejected("csv.duplicate_column")`.
    - Without a header the first record's field count plays the header's part.
    - A record whose field count differs from the header's is a `csv.field_count` reject (raw = the fields
      re-joined with the delimiter); one the reader cannot split (e.g. a field over the csv module's size
      limit) is a `csv.malformed` reject and reading resumes on the next line.
    - Blank lines are not records. Values are kept as received except that `fmt.null_tokens` become None
      and control characters are stripped, or their record rejected (`csv.control_character`, no raw text),
      as `fmt.control_characters` says.
    - A reject's `line` is the record's first physical line (1-based, the header included); ordinals count
      every record, rejected ones too.
    - A member with no non-blank line: `MemberRejected("csv.empty")`; a header alone gives zero records.
    """
    text = decode_text(data, member=member, encoding=encoding, fallbacks=fallbacks)
    return _parse_text(text, member, columns, fmt)


@dataclass
class ArrowMember:
    """One member's records as Arrow arrays: each declared column (large_string) and the 1-based ordinals."""

    columns: dict[str, pa.Array]
    ordinals: pa.Array
    rejects: list[RecordReject]
    fast: bool = False
    """Whether Polars read the member (else the standard library's reader did)."""

    @property
    def record_count(self) -> int:
        return len(self.ordinals)

    def shifted(self, records: int, lines: int) -> ArrowMember:
        """This piece of a member after `records` records and `lines` physical lines of earlier pieces."""
        return ArrowMember(
            columns=self.columns,
            ordinals=pc.add(self.ordinals, records),
            rejects=[
                replace(
                    reject,
                    record=None if reject.record is None else reject.record + records,
                    line=None if reject.line is None else reject.line + lines,
                )
                for reject in self.rejects
            ],
            fast=self.fast,
        )

    @classmethod
    def from_parsed(cls, parsed: ParsedMember) -> ArrowMember:
        return cls(
            columns={name: pa.array(values, pa.large_string()) for name, values in parsed.columns.items()},
            ordinals=pa.array(parsed.ordinals, pa.int64()),
            rejects=parsed.rejects,
        )


def parse_csv_arrow(
    data: bytes,
    *,
    member: str,
    columns: Sequence[ColumnSpec],
    fmt: CsvFormat,
    encoding: str,
    fallbacks: Sequence[str],
) -> ArrowMember:
    """`parse_csv` into Arrow arrays: the same values, ordinals, rejects and `MemberRejected` rules."""
    text = decode_text(data, member=member, encoding=encoding, fallbacks=fallbacks)
    return _parse_piece(text, member, columns, fmt, None)


CHUNK_CHARS = 8 * 1024**2
"""Characters of a CSV member parsed at a time by `parse_csv_arrow_chunks`. Measured on a 40 MB lab archive
(~460 MB of CSV, one worker): peak RSS of the bronze run 1.55 GB with 32 MiB pieces, 1.02-1.1 GB with 8 MiB,
0.95 GB with 4 MiB (a piece's parse costs many times its text: copies, Arrow offsets, allocator pools)."""


def parse_csv_arrow_chunks(
    data: bytes,
    *,
    member: str,
    columns: Sequence[ColumnSpec],
    fmt: CsvFormat,
    encoding: str,
    fallbacks: Sequence[str],
    chunk_chars: int | None = None,
) -> Iterator[ArrowMember]:
    """`parse_csv_arrow` in pieces of about `chunk_chars` (default `CHUNK_CHARS`) characters (one piece for a
    smaller member).

    A `MemberRejected` (encoding, header) is raised before the first piece. The cuts are line ends outside
    quoted fields; a member whose quotes are not all well formed (the standard library then reads quotes
    inside unquoted fields literally, so quote parity says nothing) is read in one piece.

    A large member that its declared encoding decodes (after a UTF-8 byte-order mark, if any) is cut on its
    bytes and each piece decoded alone, so memory holds the member's bytes and one piece, not the whole
    decoded text as well (~460 MB for a 40 MB lab archive). Any other member is decoded whole first
    (`decode_text`: fallback encodings, other byte-order marks, the offset of a bad byte).
    """
    chunk_chars = chunk_chars or CHUNK_CHARS
    start = _bytes_start(data, encoding, fmt, chunk_chars) if len(data) > chunk_chars else None
    if start is None:
        text: str | bytes = decode_text(data, member=member, encoding=encoding, fallbacks=fallbacks)
        start, encoding = 0, ""
    else:
        text = data
    layout: _Layout | None = None
    records, lines = 0, 0
    for end in _piece_ends(text, fmt, chunk_chars, start):
        piece = _decoded(text, start, end, encoding)
        first = layout is None
        if first:  # raises for a bad header before any piece is yielded
            layout = _layout(piece, member, columns, fmt)
        parsed = _parse_piece(piece, member, columns, fmt, None if first else layout)
        if records or lines:
            parsed = parsed.shifted(records, lines)
        yield parsed
        records += parsed.record_count + len(parsed.rejects)
        # Physical lines as the csv reader counts them: \r\n, \r and \n each end one.
        lines += piece.count("\n") + (_lone_crs(piece) if "\r" in piece else 0)
        start = end


def _bytes_start(data: bytes, encoding: str, fmt: CsvFormat, slice_bytes: int) -> int | None:
    """Where a member's text starts when it can be cut on its bytes (after a UTF-8 byte-order mark), else
    None. Cutting on bytes is exact when the encoding decodes all of it and a line end, quote or delimiter
    byte is always that character: UTF-8 or a single-byte encoding, ASCII-compatible. The encoding is tried
    on `slice_bytes` at a time."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if start:
        encoding = "utf-8"  # `decode_text` tries a mark's encoding first
    elif any(data.startswith(bom) for bom, _ in BYTE_ORDER_MARKS):
        return None
    ascii_marks = f"\r\n{fmt.delimiter}{fmt.quote}"
    if not ascii_marks.isascii() or ascii_marks.encode(encoding, errors="replace") != ascii_marks.encode():
        return None
    if codecs.lookup(encoding).name != "utf-8" and len(bytes(range(256)).decode(encoding, "replace")) != 256:
        return None  # a multi-byte encoding whose later bytes may look like ASCII
    decoder = codecs.getincrementaldecoder(encoding)()
    view = memoryview(data)
    try:
        for offset in range(start, len(data), slice_bytes):
            decoder.decode(view[offset : offset + slice_bytes])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return None  # `decode_text` finds the fallback, or the offset of the bad byte
    return start


def _decoded(text: str | bytes, start: int, end: int, encoding: str) -> str:
    """`text[start:end]` as text: `text` is the member decoded (`encoding` empty) or its bytes."""
    return text[start:end] if isinstance(text, str) else text[start:end].decode(encoding)


_NOT_A_LINE_END = re.compile(r"[^\r\n]")
_NOT_A_LINE_END_BYTE = re.compile(rb"[^\r\n]")


def _piece_ends(text: str | bytes, fmt: CsvFormat, chunk_chars: int, begin: int = 0) -> list[int]:
    """Where pieces of `text[begin:]` (a member's text, or its bytes in an encoding `_bytes_start` allows)
    end: just after a \\n outside any quoted field, the first piece holding the first record; the last end
    is len(text)."""
    newline, quote = _marks(text, "\n", fmt.quote)
    if len(text) - begin <= chunk_chars or (
        text.find(quote, begin) != -1 and not _quotes_well_formed(text, fmt.delimiter, fmt.quote, begin)
    ):
        return [len(text)]
    first_value = (_NOT_A_LINE_END if isinstance(text, str) else _NOT_A_LINE_END_BYTE).search(text, begin)
    ends: list[int] = []
    start = begin
    target = max(begin + chunk_chars, first_value.end() if first_value else 0)
    while target < len(text):
        end = text.find(newline, target)
        # Well-formed quoting: a line end is outside every quoted field when the quotes before it pair up.
        quotes = text.count(quote, start, end) if end != -1 else 0
        while end != -1 and quotes % 2:
            after = text.find(newline, end + 1)
            quotes += text.count(quote, end, after) if after != -1 else 0
            end = after
        if end == -1:
            break
        ends.append(end + 1)
        start = end + 1
        target = start + chunk_chars
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    return ends


@dataclass(frozen=True)
class _Layout:
    """A member's record width and each declared column's field index, from its header or first record."""

    width: int
    positions: dict[str, int | None]


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")


def text_lines(text: str) -> Iterator[str]:
    """The lines of `text` with their ends, as `io.StringIO(text, newline="")` gives them, cut as they are
    taken: a reader of the first record takes a line or two, where a StringIO first copied the whole
    piece (8 MiB of text, a tenth of a lab batch's bronze time)."""
    for match in _LINE.finditer(text):
        if not (line := match.group()):
            return
        yield line


def _layout(text: str, member: str, columns: Sequence[ColumnSpec], fmt: CsvFormat) -> _Layout:
    reader = csv.reader(text_lines(text), delimiter=fmt.delimiter, quotechar=fmt.quote)
    first_row = _first_row(reader, member)
    if fmt.header:
        return _Layout(len(first_row), _header_positions(first_row, columns, member))
    return _Layout(len(first_row), _numbered_positions(len(first_row), columns, member))


def _parse_piece(
    text: str, member: str, columns: Sequence[ColumnSpec], fmt: CsvFormat, layout: _Layout | None
) -> ArrowMember:
    """The member's first piece (`layout` None: it holds the header or first record) or a later one."""
    fast = _read_with_polars(text, member, columns, fmt, layout)
    if fast is not None:
        return fast
    return ArrowMember.from_parsed(_parse_text(text, member, columns, fmt, layout))


def _read_with_polars(
    text: str, member: str, columns: Sequence[ColumnSpec], fmt: CsvFormat, layout: _Layout | None = None
) -> ArrowMember | None:
    """Polars' reader on a member it provably reads as the standard library does; None when not sure.

    Polars pads a short record with nulls, keeps blank lines as all-null rows, reads an unquoted empty
    field as null, only ends lines at \n, and treats quotes inside unquoted fields differently. So the
    member qualifies only if: no control character (NUL included; values holding one are the standard
    library path's to strip or reject) and no \r outside \r\n; every quote belongs to a well-formed quoted
    field; Polars raises nothing (it raises on a long record); its first row is the standard library's
    first record; the last column holds no null (no short record, no blank line); and no value reaches the
    csv module's field size limit.
    """
    delimiter, quote = fmt.delimiter, fmt.quote
    if (
        not (delimiter.isascii() and quote.isascii())
        or ("\r" in text and _lone_crs(text))
        or (quote in text and not _quotes_well_formed(text, delimiter, quote))
    ):
        return None
    encoded = text.encode()
    if has_control_characters(encoded):
        return None
    if not encoded.endswith(b"\n"):
        # Polars drops a last record's trailing empty field when no line end follows it (`a,b,` read as two
        # fields where the standard library reads three): with one, it reads the record as a ragged line.
        encoded += b"\n"
    # The header (or first record) and the declared positions exactly as the standard library path finds
    # them, MemberRejected included; only the first record is split here. A later piece of a member has
    # the member's layout and starts with a record.
    reader = csv.reader(text_lines(text), delimiter=delimiter, quotechar=quote)
    try:
        first_row = _first_row(reader, member)
    except MemberRejected:
        if layout is None:
            raise
        return None  # a later piece of blank lines only: the standard library path reads no record in it
    header_here = fmt.header and layout is None
    layout = layout or _layout(text, member, columns, fmt)
    width, positions = layout.width, layout.positions

    import polars as pl  # imported here so that pool workers can size its thread pool first

    try:
        frame = pl.read_csv(
            encoded,
            has_header=False,
            infer_schema=False,
            separator=delimiter,
            quote_char=quote,
            truncate_ragged_lines=False,
        )
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException):
        return None
    if frame.width != width or not len(frame) or frame.get_column(frame.columns[-1]).null_count():
        return None
    if tuple("" if value is None else value for value in frame.row(0)) != tuple(first_row):
        return None
    limit = csv.field_size_limit()
    # A value has at least as many bytes as characters: they are counted only when its bytes reach the limit.
    if (
        _longest(frame, pl.all().str.len_bytes()) >= limit
        and _longest(frame, pl.all().str.len_chars()) >= limit
    ):
        return None

    records = frame.slice(1) if header_here else frame
    nulls = list(fmt.null_tokens)
    declared = {column.name: index for column in columns if (index := positions[column.name]) is not None}
    # Only a column holding a null token (or, when "" is not one, Polars' null for an unquoted empty field,
    # the reader's "") is mapped: the others, most of them, go on as read (a third of the selection's time).
    indexes = sorted(set(declared.values()))
    holds = [pl.nth(index).is_in(nulls).any() for index in indexes]
    if "" not in nulls:
        holds = [held | pl.nth(index).is_null().any() for held, index in zip(holds, indexes, strict=True)]
    mapped = set(compress(indexes, records.select(holds).row(0))) if indexes else set()

    def value(index: int) -> pl.Expr:
        received = pl.nth(index)
        if index not in mapped:
            return received
        if "" not in nulls:
            received = received.fill_null("")
        return pl.when(received.is_in(nulls)).then(None).otherwise(received) if nulls else received

    # Arrow's large strings straight from Polars (its oldest layout), not its string views cast again; from
    # one chunk of views (the reader's 17 chunks of a lab piece took twice as long to convert and join).
    selected = [value(index).alias(name) for name, index in declared.items()]
    table = records.select(selected).rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    # A table's `combine_chunks` keeps a column of one chunk as it is (a column's own copies it again).
    table = table.combine_chunks()
    count = len(records)
    found = {name: table.column(name).chunk(0).cast(pa.large_string()) for name in declared}
    return ArrowMember(
        columns={
            column.name: found.get(column.name, pa.nulls(count, pa.large_string())) for column in columns
        },
        ordinals=pl.int_range(1, count + 1, dtype=pl.Int64, eager=True).to_arrow(),
        rejects=[],
        fast=True,
    )


def _longest(frame: pl.DataFrame, lengths: pl.Expr) -> int:
    """The largest of `lengths` (a length per value of every column) in `frame`, 0 for none."""
    return frame.select(lengths.max()).max_horizontal().item() or 0


def _lone_crs(text: str) -> int:
    """The \r not followed by \n. Only called on text holding a \r: finding one is a few times cheaper than
    counting them, and counting \r\n ten times dearer (14 ms per 8 MiB piece, most of them without any)."""
    return text.count("\r") - text.count("\r\n")


def _quotes_well_formed(text: str | bytes, delimiter: str, quote: str, begin: int = 0) -> bool:
    """Whether every quote character opens or closes a whole field, or is a doubled quote inside one
    (in `text[begin:]`: text, or bytes that `_bytes_start` allows cutting).

    Polars finds line ends by quote parity over the whole text, so a stray quote in an unquoted field (read
    literally by the standard library) can make it merge lines; text after a closing quote is read
    differently too. Only quoted fields are visited, each from its opening quote.
    """
    boundaries = _marks(text, delimiter, "\r", "\n")
    for match in _quoted_field(quote, isinstance(text, str)).finditer(text, begin):
        start, end = match.span()
        if start > begin and text[start - 1 : start] not in boundaries:
            return False
        if end < len(text) and text[end : end + 1] not in boundaries:
            return False
    return True


@lru_cache(maxsize=16)
def _quoted_field(quote: str, text: bool) -> re.Pattern:
    """A quoted field: its quotes, and inside them any run of other characters or doubled quotes. Written
    as runs (`[^"]*(?:""[^"]*)*`), not a choice per character (`(?:[^"]|"")*`): the same fields, 40% less
    of a lab piece's time in the regex engine."""
    q = re.escape(quote)
    pattern = f"{q}[^{q}]*(?:{q}{q}[^{q}]*)*{q}"
    return re.compile(pattern if text else pattern.encode())


def _marks(text: str | bytes, *characters: str) -> tuple:
    """ASCII `characters` as `text` holds them: themselves, or their bytes."""
    return characters if isinstance(text, str) else tuple(mark.encode() for mark in characters)


def _parse_text(
    text: str, member: str, columns: Sequence[ColumnSpec], fmt: CsvFormat, layout: _Layout | None = None
) -> ParsedMember:
    """The standard library path of `parse_csv` on decoded text (a later piece of it: with `layout`)."""
    # newline="" splits lines only on \r, \n and \r\n (never on \x1c or \u2028, as str.splitlines would) and
    # leaves the endings to the csv reader, so no stray \r reaches a value and quoted newlines survive.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter, quotechar=fmt.quote)
    if layout is None:
        first_row = _first_row(reader, member)
        width = len(first_row)
        if fmt.header:
            positions = _header_positions(first_row, columns, member)
        else:
            positions = _numbered_positions(width, columns, member)
        pending = [] if fmt.header else [first_row]
    else:
        width, positions, pending = layout.width, layout.positions, []
    declared = [(column.name, index) for column in columns if (index := positions[column.name]) is not None]
    # The per-value check runs only for a member that holds a control character somewhere.
    control = fmt.control_characters if has_control_characters(text.encode()) else None
    picked, rejects = _collect(reader, width, declared, pending, member, fmt.delimiter, control)

    nulls = frozenset(fmt.null_tokens)
    found = {
        name: _without_nulls(list(map(itemgetter(position), picked)), nulls)
        for position, (name, _) in enumerate(declared)
    }
    parsed = {column.name: found.get(column.name) or [None] * len(picked) for column in columns}
    ordinals = _ordinals(len(picked) + len(rejects), {reject.record for reject in rejects})
    return ParsedMember(columns=parsed, ordinals=ordinals, rejects=rejects)


def _first_row(reader: Reader, member: str) -> list[str]:
    """The first non-blank record: the header, or the first data record of a headerless file."""
    try:
        for row in reader:
            if row:
                return row
    except csv.Error as error:
        raise MemberRejected(
            "csv.malformed", f"first record cannot be read: {error}", member=member, line=reader.line_num
        ) from None
    raise MemberRejected("csv.empty", "no header and no records", member=member)


def _header_positions(header: list[str], columns: Sequence[ColumnSpec], member: str) -> dict[str, int | None]:
    """Each declared column's field index in the header, None for an absent nullable column."""
    found: dict[str, list[int]] = {}
    for index, name in enumerate(header):
        found.setdefault(name.strip().casefold(), []).append(index)
    positions: dict[str, int | None] = {}
    missing, duplicated = [], []
    for column in columns:
        indexes = found.get(column.source.strip().casefold(), [])
        if len(indexes) > 1:
            duplicated.append(f"{column.name} (header {column.source!r})")
        elif not indexes and not column.nullable:
            missing.append(f"{column.name} (header {column.source!r})")
        positions[column.name] = indexes[0] if indexes else None
    if duplicated:
        raise MemberRejected(
            "csv.duplicate_column", f"header repeats declared columns: {', '.join(duplicated)}", member=member
        )
    if missing:
        raise MemberRejected(
            "csv.missing_column", f"header lacks required columns: {', '.join(missing)}", member=member
        )
    return positions


def _numbered_positions(width: int, columns: Sequence[ColumnSpec], member: str) -> dict[str, int | None]:
    """Field indexes from 1-based `source` positions; a position past the first record's width is absent."""
    positions: dict[str, int | None] = {}
    missing = []
    for column in columns:
        if not column.source.isdigit() or int(column.source) < 1:
            raise ValueError(
                f"column {column.name}: source must be a 1-based field position without a header"
            )
        index = int(column.source) - 1
        if index >= width and not column.nullable:
            missing.append(f"{column.name} (field {column.source})")
        positions[column.name] = index if index < width else None
    if missing:
        raise MemberRejected(
            "csv.missing_column",
            f"records have {width} fields, too few for required columns: {', '.join(missing)}",
            member=member,
        )
    return positions


def _collect(
    reader: Reader,
    width: int,
    declared: list[tuple[str, int]],
    pending: list[list[str]],
    member: str,
    delimiter: str,
    control: str | None = None,
) -> tuple[list[tuple[str, ...]], list[RecordReject]]:
    """The declared fields (name, index) of each well-shaped record (`pending` first) and the rejects: the
    hot loop. `control` is the policy for values with control characters (None: the member has none).

    Only small tuples of the declared fields are kept, never the reader's row lists: tuples of strings drop
    out of the garbage collector's tracking, so millions of kept rows do not slow every collection.
    """
    pick = _picker([index for _, index in declared])
    picked: list[tuple[str, ...]] = []
    rejects: list[RecordReject] = []

    def keep(values: tuple[str, ...], line: int) -> None:
        if control is not None and CONTROL_CHARACTER.search("".join(values)):
            if control == "strip":
                values = tuple(CONTROL_CHARACTER.sub("", value) for value in values)
            else:
                name, value = next(
                    (name, value)
                    for (name, _), value in zip(declared, values, strict=True)
                    if CONTROL_CHARACTER.search(value)
                )
                record = len(picked) + len(rejects) + 1
                reason = control_character_reason(name, value)
                rejects.append(RecordReject(member, record, line, "csv.control_character", reason, None))
                return
        picked.append(values)

    for row in pending:
        keep(pick(row), reader.line_num)
    last_line = reader.line_num  # physical lines consumed before the next record
    while True:
        try:
            for row in reader:
                if len(row) == width:
                    if control is None:
                        picked.append(pick(row))
                    else:
                        keep(pick(row), last_line + 1)
                elif row:
                    rejects.append(
                        RecordReject(
                            member=member,
                            record=len(picked) + len(rejects) + 1,
                            line=last_line + 1,
                            rule="csv.field_count",
                            reason=f"expected {width} fields, got {len(row)}",
                            raw=delimiter.join(row),
                        )
                    )
                last_line = reader.line_num
            return picked, rejects
        except csv.Error as error:
            # The C reader resets on the next call and resumes at the following physical line.
            rejects.append(
                RecordReject(
                    member=member,
                    record=len(picked) + len(rejects) + 1,
                    line=last_line + 1,
                    rule="csv.malformed",
                    reason=f"record cannot be split: {error}",
                )
            )
            last_line = reader.line_num


def _picker(indexes: list[int]) -> Callable[[list[str]], tuple[str, ...]]:
    """A C-speed function from a row to the tuple of its fields at `indexes` (always a tuple)."""
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: (row[index],)
    if not indexes:
        return lambda row: ()
    return itemgetter(*indexes)


def _without_nulls(values: list[str | None], nulls: frozenset[str]) -> list[str | None]:
    """`values` with null tokens as None; the C-speed disjointness test skips columns that hold none."""
    if nulls.isdisjoint(values):
        return values
    return [None if value in nulls else value for value in values]


def _ordinals(total: int, rejected: set[int | None]) -> list[int]:
    """1-based ordinals of the kept records among `total` records."""
    if not rejected:
        return list(range(1, total + 1))
    return [ordinal for ordinal in range(1, total + 1) if ordinal not in rejected]
