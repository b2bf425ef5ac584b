"""HL7 v2 text members -> columnar records, one record per message (pure functions, no Dagster).

A member holds one or many messages, optionally inside FHS/BHS ... BTS/FTS batch envelopes. Each column's
`source` is a path such as `MSH-10`, `PID-3.1`, `PV1-3.3`, `PID-5.1.2` (subcomponent), `PID-3(2).1`
(explicit repetition) or `OBX[2]-5` (second occurrence of a segment).

Messages are found on raw bytes (segment terminators and the MSH/envelope heads are ASCII in every supported
charset), then each message is decoded with its own MSH-18 charset, split with its own MSH-1/MSH-2
delimiters, and unescaped after splitting. With `repeat: join` repetitions are joined with `~` whatever the
message's own repetition character; blanks at the ends of a segment line are dropped. A bad message is
quarantined as a `RecordReject`; only a member with no message at all is rejected whole. Messages, errors
and rejects name lines and rules, never values.

That is `parse_hl7_by_message`, about 60 us a message. Nearly every member a feed sends is clean (one codec,
one set of delimiters, every message accepted): `parse_hl7` checks such a member once as a whole and reads it
a column at a time (`_read_clean`, a third of the CPU less), and any other message by message. The tests hold
both to the same records on every member they build.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from medlake_assets.errors import MedlakeError
from medlake_assets.ingest.text import apply_control_policy, has_control_characters
from medlake_assets.ingest.types import MemberRejected, ParsedMember, RecordReject
from medlake_assets.spec.models import ColumnSpec, Hl7Format

__all__ = ["Hl7Path", "Hl7PathError", "parse_hl7", "parse_hl7_by_message", "parse_hl7_path"]

# MLLP framing bytes (start block 0x0B, end block 0x1C) sometimes survive into files; treat them as blanks.
_BLANK_BYTES = b" \t\x0b\x0c\x1c"
_BLANK_TEXT = _BLANK_BYTES.decode("ascii")
_HEADS = frozenset({b"MSH", b"FHS", b"BHS", b"BTS", b"FTS"})  # a message's first segment, or an envelope's
_HEAD_NAMES = frozenset(head.decode("ascii") for head in _HEADS)
_UTF8_BOM = codecs.BOM_UTF8

# HL7 table 0211 (MSH-18) -> Python codec. Wide encodings (UTF-16/32) are left out on purpose: messages are
# found by splitting bytes on ASCII terminators, which only holds for ASCII-compatible encodings.
_HL7_CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    **{f"8859/{n}": f"iso-8859-{n}" for n in range(1, 10)},
    "8859/15": "iso-8859-15",
    "ISO IR100": "latin-1",
    "ISO IR101": "iso-8859-2",
    "ISO IR109": "iso-8859-3",
    "ISO IR110": "iso-8859-4",
    "ISO IR144": "iso-8859-5",
    "ISO IR127": "iso-8859-6",
    "ISO IR126": "iso-8859-7",
    "ISO IR138": "iso-8859-8",
    "ISO IR148": "iso-8859-9",
    "UNICODE UTF-8": "utf-8",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc-kr",
    "BIG-5": "big5",
}
_WIDE_CODECS = ("utf-16", "utf-32")

_PATH = re.compile(
    r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<occurrence>[1-9]\d*)\])?"
    r"-(?P<field>[1-9]\d*)(?:\((?P<repetition>[1-9]\d*)\))?"
    r"(?:\.(?P<component>[1-9]\d*)(?:\.(?P<subcomponent>[1-9]\d*))?)?$"
)


class Hl7PathError(MedlakeError, ValueError):
    """A column `source` is not an HL7 path; a metadata error, raised before any data is read."""


@dataclass(frozen=True, slots=True)
class Hl7Path:
    """One compiled column path; numbers are 1-based as in HL7, None means 'not given'."""

    segment: str
    field: int
    occurrence: int = 1
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None


def parse_hl7_path(source: str) -> Hl7Path:
    """Compile `SEG[occ]-F(rep).C.S` (all but SEG and F optional), e.g. `PID-3.1` or `OBX[2]-5(1).2`."""
    match = _PATH.match(source.strip())
    if match is None:
        raise Hl7PathError(f"{source!r} is not an HL7 path like PID-3.1, PID-3(2).1.1 or OBX[2]-5")
    groups = match.groupdict()
    return Hl7Path(
        segment=groups["segment"],
        field=int(groups["field"]),
        occurrence=int(groups["occurrence"] or 1),
        repetition=int(groups["repetition"]) if groups["repetition"] else None,
        component=int(groups["component"]) if groups["component"] else None,
        subcomponent=int(groups["subcomponent"]) if groups["subcomponent"] else None,
    )


# A column's path as the extraction loop reads it: (column index, field, whether the inlined common case
# applies, component, subcomponent, the path itself).
_Item = tuple[int, int, bool, int | None, int | None, Hl7Path]


@lru_cache(maxsize=256)
def _compile_plan(sources: tuple[str, ...]) -> tuple[tuple[str, int, tuple[_Item, ...]], ...]:
    """Group the paths by (segment, occurrence) so each segment is split once per message."""
    groups: dict[tuple[str, int], list[_Item]] = {}
    for index, source in enumerate(sources):
        path = parse_hl7_path(source)
        # MSH-1 and MSH-2 are atomic (see `_Extractor.value`); any other path asking for a repetition but
        # the first takes the general path too.
        common = (path.repetition or 1) == 1 and not (path.segment == "MSH" and path.field <= 2)
        item = (index, path.field, common, path.component, path.subcomponent, path)
        groups.setdefault((path.segment, path.occurrence), []).append(item)
    return tuple((segment, occurrence, tuple(items)) for (segment, occurrence), items in groups.items())


def _canonical_chain(names: Sequence[str]) -> tuple[str, ...]:
    chain: list[str] = []
    for name in names:
        canonical = codecs.lookup(name).name
        if canonical not in chain:
            chain.append(canonical)
    return tuple(chain)


@lru_cache(maxsize=256)
def _declared_chain(charset: str, default_chain: tuple[str, ...]) -> tuple[str, ...] | None:
    """Codecs to try for a message whose MSH-18 is `charset` (upper-cased); None if it names no known one.

    The declared charset comes first; the member encoding and its fallbacks follow because senders often
    label messages wrongly (e.g. ASCII holding UTF-8), and a value decoded by a fallback beats losing it.
    """
    try:
        declared = codecs.lookup(_HL7_CHARSETS.get(charset, charset)).name
    except (LookupError, ValueError):  # ValueError: a name holding a NUL
        return None
    if declared.startswith(_WIDE_CODECS):
        return None
    return _canonical_chain([declared, *default_chain])


def _decode(raw: bytes, chain: Sequence[str]) -> tuple[str, str] | None:
    """(text, codec) with the first codec that decodes all of `raw`, or None."""
    for codec in chain:
        try:
            return raw.decode(codec), codec
        except (UnicodeError, LookupError):
            # LookupError: a name Python knows that is not a text encoding (e.g. MSH-18 `base64`);
            # UnicodeError beyond UnicodeDecodeError: codecs such as `punycode` or `undefined`.
            continue
    return None


class _Delimiters:
    """One message's separators; an encoding character the sender left out is '' and never splits."""

    __slots__ = ("component", "escape", "field", "repetition", "subcomponent")

    def __init__(self, field: str, encoding_characters: str):
        chars = (encoding_characters + "\0\0\0\0")[:4]
        self.field = field
        self.component, self.repetition, self.escape, self.subcomponent = (
            "" if char == "\0" else char for char in chars
        )


def _delimiters(msh: str) -> _Delimiters | None:
    """The delimiters declared by an MSH segment (MSH-1 and MSH-2), or None if they are unusable."""
    if len(msh) < 5:
        return None
    separator = msh[3]
    return _delimiters_of(separator, msh[4:9].split(separator, 1)[0][:4])


@lru_cache(maxsize=64)
def _delimiters_of(separator: str, encoding_characters: str) -> _Delimiters | None:
    # Cached: nearly every message of a feed declares the same delimiters.
    chars = separator + encoding_characters
    if (
        not encoding_characters
        or len(set(chars)) != len(chars)
        or any(char.isalnum() or char.isspace() for char in chars)
    ):
        return None
    return _Delimiters(separator, encoding_characters)


def _unescape(value: str, delimiters: _Delimiters, codec: str) -> str:
    """Resolve \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ and \\.br\\; keep unknown or unterminated ones."""
    escape = delimiters.escape
    known = {
        "F": delimiters.field,
        "S": delimiters.component,
        "T": delimiters.subcomponent,
        "R": delimiters.repetition,
        "E": escape,
        ".br": "\n",
    }
    parts = value.split(escape)
    out = [parts[0]]
    last = len(parts) - 1
    index = 1
    while index <= last:
        sequence = parts[index]
        if index == last:  # an escape character with no closing one is plain text
            out.append(escape + sequence)
            break
        replacement = known.get(sequence)
        if not replacement and sequence[:1] == "X" and len(sequence) > 1:
            try:
                replacement = bytes.fromhex(sequence[1:]).decode(codec)
            except ValueError:  # odd or non-hex digits, or bytes the charset cannot decode
                replacement = None
        out.append(replacement if replacement else escape + sequence + escape)
        out.append(parts[index + 1])
        index += 2
    return "".join(out)


class _Extractor:
    """Reads one path's value from a split segment with the current message's delimiters."""

    __slots__ = ("codec", "delimiters", "join", "null_tokens")

    def __init__(self, null_tokens: frozenset[str], join: bool):
        self.null_tokens = null_tokens
        self.join = join
        self.delimiters: _Delimiters
        self.codec = ""

    def fill(self, values: list[str | None], fields: list[str], items: tuple[_Item, ...]) -> None:
        """Set `values[index]` for each item from one split segment (None stays where nothing is).

        The common case (no repetition in the field, the whole field or one component asked) is inlined: this
        loop runs for every column of every message.
        """
        count = len(fields)
        delimiters = self.delimiters
        repetition, component, escape = delimiters.repetition, delimiters.component, delimiters.escape
        null_tokens = self.null_tokens
        for index, field, common, wanted, sub, path in items:
            if field >= count:
                continue
            value = fields[field]
            if not value:
                continue
            if not common or (repetition and repetition in value):
                values[index] = self.value(fields, path)
                continue
            if wanted is not None:
                if sub is not None:
                    value = self._component(value, path)
                elif component:
                    parts = value.split(component, wanted)
                    value = parts[wanted - 1] if wanted <= len(parts) else None
                elif wanted > 1:
                    continue
            if not value or value in null_tokens:
                continue
            values[index] = _unescape(value, delimiters, self.codec) if escape and escape in value else value

    def value(self, fields: list[str], path: Hl7Path) -> str | None:
        if path.field >= len(fields):
            return None
        value = fields[path.field]
        if not value:
            return None
        if path.field <= 2 and path.segment == "MSH":
            # MSH-1 is the field separator and MSH-2 the encoding characters: atomic, never split.
            wanted = (path.repetition or 1, path.component or 1, path.subcomponent or 1)
            return value if wanted == (1, 1, 1) else None
        repetition = self.delimiters.repetition
        if not repetition or repetition not in value:
            return self._finish(self._component(value, path)) if (path.repetition or 1) == 1 else None
        repetitions = value.split(repetition)
        if path.repetition is not None:
            if path.repetition > len(repetitions):
                return None
            return self._finish(self._component(repetitions[path.repetition - 1], path))
        if not self.join:
            return self._finish(self._component(repetitions[0], path))
        parts = [self._finish(self._component(item, path)) for item in repetitions]
        if all(part is None for part in parts):
            return None
        return "~".join(part or "" for part in parts)

    def _component(self, value: str, path: Hl7Path) -> str | None:
        if path.component is None:
            return value
        component = self.delimiters.component
        parts = value.split(component) if component else [value]
        if path.component > len(parts):
            return None
        value = parts[path.component - 1]
        if path.subcomponent is None:
            return value
        subcomponent = self.delimiters.subcomponent
        parts = value.split(subcomponent) if subcomponent else [value]
        return parts[path.subcomponent - 1] if path.subcomponent <= len(parts) else None

    def _finish(self, value: str | None) -> str | None:
        # Null tokens are wire markers (HL7 `""`), so they are compared before unescaping.
        if not value or value in self.null_tokens:
            return None
        escape = self.delimiters.escape
        if escape and escape in value:
            return _unescape(value, self.delimiters, self.codec)
        return value


def _type_filter(message_types: Sequence[str]) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """`ADT` matches MSH-9.1; `ADT^A01` matches MSH-9.1 and MSH-9.2 (metadata always uses `^`)."""
    types, events = set(), set()
    for entry in message_types:
        parts = [part.strip().upper() for part in entry.split("^")]
        if len(parts) == 1 or not parts[1]:
            types.add(parts[0])
        else:
            events.add((parts[0], parts[1]))
    return frozenset(types), frozenset(events)


@dataclass(slots=True)  # not frozen: one is made per message, and a frozen one is slower to make
class _MessageSpan:
    ordinal: int
    line: int  # 1-based line of the MSH segment
    start: int  # index into the member's lines
    end: int


def _split_member(lines: list[bytes], member: str) -> tuple[list[_MessageSpan], list[tuple[int, int]]]:
    """Messages and runs of orphan lines (start, end) as line-index spans; envelopes are dropped."""
    # Lines that open a message or an envelope, with their heads; a comprehension keeps the per-line work
    # at C speed.
    heads = {
        index: head for index, line in enumerate(lines) if (head := line.lstrip(_BLANK_BYTES)[:3]) in _HEADS
    }
    messages: list[_MessageSpan] = []
    orphans: list[tuple[int, int]] = []
    # What lies before the first mark or between an envelope line and the next mark belongs to no message.
    loose = [(0, next(iter(heads), len(lines)))]
    for mark, end in pairwise([*heads, len(lines)]):
        if heads[mark] == b"MSH":
            messages.append(_MessageSpan(len(messages) + 1, mark + 1, mark, end))
        else:
            loose.append((mark + 1, end))
    for start, end in loose:
        first_written = next((index for index in range(start, end) if lines[index].strip(_BLANK_BYTES)), None)
        if first_written is not None:
            orphans.append((first_written, end))
    if not messages:
        raise MemberRejected(
            "hl7.no_msh", "no MSH segment found: the member holds no HL7 v2 message", member=member
        )
    return messages, orphans


@dataclass(slots=True)  # not frozen, as _MessageSpan
class _Header:
    """What the MSH segment says before the message is decoded (read from its ASCII-compatible bytes)."""

    delimiters: _Delimiters
    type_field: str  # MSH-9 as received
    message_type: str  # MSH-9.1, upper-cased
    event: str  # MSH-9.2, upper-cased
    control_id: str  # MSH-10, '' when missing
    charset: str  # MSH-18 first repetition and component, upper-cased, '' when absent


def _first_component(value: str, delimiters: _Delimiters, null_tokens: frozenset[str]) -> str:
    """A header field's first repetition's first component, '' when it is a null token."""
    if delimiters.repetition:
        value = value.split(delimiters.repetition, 1)[0]
    value = value.split(delimiters.component, 1)[0].strip()
    return "" if value in null_tokens else value


def _read_header(msh: str, null_tokens: frozenset[str]) -> _Header | tuple[str, str]:
    """The MSH header, or (rule, reason) when it cannot identify the message."""
    delimiters = _delimiters(msh)
    if delimiters is None:
        return "hl7.malformed_msh", "MSH-1/MSH-2 delimiters are missing or invalid"
    fields = msh.split(delimiters.field, 18)  # fields[n - 1] is MSH-n for n >= 2
    fields += [""] * (18 - len(fields))
    message_type, control_id, charset = (
        _first_component(fields[number - 1], delimiters, null_tokens) for number in (9, 10, 18)
    )
    if not message_type:
        return "hl7.missing_message_type", "MSH-9 message type is empty"
    type_parts = fields[8].split(delimiters.component, 2)
    event = type_parts[1].strip().upper() if len(type_parts) > 1 else ""
    return _Header(delimiters, fields[8], message_type.upper(), event, control_id, charset.upper())


@lru_cache(maxsize=256)
def _undeclared_separators(type_field: str, delimiters: _Delimiters) -> str | None:
    """Why MSH-9 shows that the message uses separators its MSH-2 does not declare, or None.

    MSH-9 holds only codes and component separators, so one of HL7's customary separators `^~\\&` in it
    that MSH-2 does not declare means the sender used separators other than the ones it declared (e.g.
    MSH-2 `$~\\&` with `^` in the fields): read with the declared ones, the message would be split wrongly
    or dropped by the type filter.
    """
    declared = {delimiters.component, delimiters.repetition, delimiters.subcomponent, delimiters.escape}
    used = sorted({char for char in type_field if char in "^~\\&" and char not in declared})
    if not used:
        return None
    return (
        f"MSH-2 declares component separator {delimiters.component!r}, but MSH-9 (message type) uses "
        f"{', '.join(repr(char) for char in used)}, which MSH-2 does not declare"
    )


def _index_segments(text: str, separator: str, needed: frozenset[str]) -> dict[str, list[str]] | int:
    """The segments named in `needed`, by name in message order, or the offset of the first bad line."""
    found: dict[str, list[str]] = {}
    for offset, part in enumerate(text.split("\r")):
        segment = part.strip(_BLANK_TEXT)
        if not segment:
            continue
        name = segment[:3]
        if (
            len(name) < 3
            or not (name.isascii() and name.isalnum())
            or (len(segment) > 3 and segment[3] != separator)
        ):
            return offset
        if name in needed:
            found.setdefault(name, []).append(segment)
    return found


def _lenient_text(raw: bytes, chain: Sequence[str]) -> str:
    decoded = _decode(raw, chain)
    return decoded[0] if decoded else raw.decode("latin-1")


@dataclass(frozen=True, slots=True)
class _Reading:
    """What every message of a member is read with, from the source's metadata."""

    names: list[str]  # the columns, in order
    groups: list[tuple[str, int, bool, tuple[_Item, ...]]]  # (segment, occurrence, is MSH, its paths)
    needed: frozenset[str]  # the segments any column reads
    wanted_types: frozenset[str]
    wanted_events: frozenset[tuple[str, str]]
    not_accepted: str  # why a message the type filter leaves out is quarantined
    null_tokens: frozenset[str]
    join: bool
    default_chain: tuple[str, ...]  # the member's encoding, then its fallbacks

    @classmethod
    def of(
        cls, columns: Sequence[ColumnSpec], fmt: Hl7Format, encoding: str, fallbacks: Sequence[str]
    ) -> _Reading:
        plan = _compile_plan(tuple(column.source for column in columns))
        wanted_types, wanted_events = _type_filter(fmt.message_types)
        return cls(
            names=[column.name for column in columns],
            groups=[(segment, occurrence, segment == "MSH", items) for segment, occurrence, items in plan],
            needed=frozenset(segment for segment, _, _ in plan),
            wanted_types=wanted_types,
            wanted_events=wanted_events,
            not_accepted=(
                f"MSH-9 message type is not among the source's message_types {list(fmt.message_types)}"
            ),
            null_tokens=frozenset(fmt.null_tokens),
            join=fmt.repeat == "join",
            default_chain=_canonical_chain([encoding, *fallbacks]),
        )

    def header_problem(self, header: _Header) -> tuple[str, str] | None:
        """(rule, reason) when a message with this MSH segment is quarantined before it is decoded."""
        # Cached: a feed sends few message types, and its delimiters object is shared (`_delimiters_of`).
        mismatch = _undeclared_separators(header.type_field, header.delimiters)
        if mismatch is not None:
            return "hl7.delimiter_mismatch", mismatch
        if (self.wanted_types or self.wanted_events) and (
            header.message_type not in self.wanted_types
            and (header.message_type, header.event) not in self.wanted_events
        ):
            # Kept in quarantine rather than dropped: every message ends in bronze or quarantine.
            return "hl7.message_type_not_accepted", self.not_accepted
        if not header.control_id:
            return "hl7.missing_control_id", "MSH-10 message control id is empty"
        if self.chain(header) is None:
            return "hl7.unknown_charset", "MSH-18 names an unsupported character set"
        return None

    def chain(self, header: _Header) -> tuple[str, ...] | None:
        """The codecs a message is decoded with, its declared charset's first; None for an unknown one."""
        return _declared_chain(header.charset, self.default_chain) if header.charset else self.default_chain

    def values(self, found: dict[str, list[str]], separator: str, extractor: _Extractor) -> list[str | None]:
        """One message's value for each column, from its segments by name (`found`)."""
        values: list[str | None] = [None] * len(self.names)
        for segment_name, occurrence, is_msh, items in self.groups:
            occurrences = found.get(segment_name)
            if occurrences is None or len(occurrences) < occurrence:
                continue
            fields = occurrences[occurrence - 1].split(separator)
            if is_msh:
                fields.insert(1, separator)  # MSH-1 is the separator itself: align fields[n] with MSH-n
            extractor.fill(values, fields, items)
        return values


def parse_hl7(
    data: bytes,
    *,
    member: str,
    columns: Sequence[ColumnSpec],
    fmt: Hl7Format,
    encoding: str,
    fallbacks: Sequence[str],
) -> ParsedMember:
    """Parse one member's HL7 v2 messages into one record per accepted message.

    Ordinals count every message in file order (including rejected and type-filtered ones) so `_record`
    stays stable whatever the filter. Raises `MemberRejected("hl7.no_msh")` when the member holds no
    message, and `Hl7PathError` when a column source is not an HL7 path.

    A clean member (`_read_clean`: nearly every member a feed sends) is checked and split a whole member at a
    time; any other is read message by message (`parse_hl7_by_message`), with the same records.
    """
    reading = _Reading.of(columns, fmt, encoding, fallbacks)
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    clean = _read_clean(data, reading)
    return clean if clean is not None else _read_by_message(data, member, reading, fmt)


def parse_hl7_by_message(
    data: bytes,
    *,
    member: str,
    columns: Sequence[ColumnSpec],
    fmt: Hl7Format,
    encoding: str,
    fallbacks: Sequence[str],
) -> ParsedMember:
    """`parse_hl7` message by message whatever the member: what the whole-member route must equal."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    return _read_by_message(data, member, _Reading.of(columns, fmt, encoding, fallbacks), fmt)


def _splits_on_line_ends(codec: str) -> bool:
    """Whether decoding a whole member equals decoding each of its messages: a stateless codec in which a
    line end is always its ASCII byte (UTF-8 and the single-byte ones)."""
    return codec in {"utf-8", "ascii"} or codec.startswith(("iso8859-", "cp125"))


@lru_cache(maxsize=64)
def _not_a_segment(separator: str) -> re.Pattern[str]:
    """Finds, in a `_member_text`, a written line that is not three ASCII letters or digits, then the
    line's end or the field separator (a pattern that starts with a literal searches fast)."""
    return re.compile(rf"\r(?!\r|$|[A-Za-z0-9]{{3}}(?:\r|$|{re.escape(separator)}))")


COLUMN_MESSAGES = 4096
"""Messages of a clean member read a column at a time together: bounds the split segments held at once (a
segment of 45 fields split is ~3 KB of Python objects, 4x its text)."""

# In a `_member_text`: a message's or an envelope's first line.
_MESSAGE_HEAD = re.compile(r"\r(?=MSH|FHS|BHS|BTS|FTS)")


def _member_text(data: bytes, codec: str) -> str:
    """The member decoded, with each line after a `\\r`: lines end where `bytes.splitlines` ends them (at
    \\r\\n, \\r or \\n; `str.splitlines` ends them at more characters)."""
    text = data.decode(codec)
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return "\r" + text + "\r"


def _member_messages(text: str) -> list[str] | None:
    """A member's messages from `_member_text`, or None when a written line lies outside any message."""
    before, *parts = _MESSAGE_HEAD.split(text)
    if before.strip("\r"):
        return None
    messages = []
    for part in parts:
        if part.startswith("MSH"):
            messages.append(part)
        elif part.partition("\r")[2].strip("\r"):  # lines after an envelope's
            return None
    return messages


def _read_clean(data: bytes, reading: _Reading) -> ParsedMember | None:
    """A clean member's records, or None when it needs reading message by message.

    Clean: no control character; no line outside a message; one set of delimiters; ASCII MSH segments that
    are all accepted and declare one codec (or none: the member's) in which the member decodes whole; every
    written line a segment from its first character (no blank before it, no line of blanks). Each check runs
    once per member at C speed (or once per distinct header), and the values a column at a time.
    """
    if has_control_characters(data):
        return None
    # Line ends and MSH segments are ASCII in every codec read here: the structure is the same in any of them,
    # and latin-1 (a byte per character, as `parse_hl7_by_message` reads a header) decodes any bytes.
    read_as = reading.default_chain[0] if _splits_on_line_ends(reading.default_chain[0]) else "iso8859-1"
    try:
        text = _member_text(data, read_as)
    except UnicodeError:
        read_as, text = "iso8859-1", _member_text(data, "iso8859-1")
    messages = _member_messages(text)
    if not messages:
        return None
    headers = [message.partition("\r")[0].rstrip(_BLANK_TEXT) for message in messages]
    if len({msh[3:9] for msh in headers}) != 1 or not all(msh.isascii() for msh in headers):
        return None
    delimiters = _delimiters(headers[0])
    if delimiters is None or _not_a_segment(delimiters.field).search(text):
        return None
    del text  # the messages hold their own copy
    codec = _clean_headers_codec(headers, delimiters, reading)
    if codec is None:
        return None
    if codec != read_as:
        try:
            messages = _member_messages(_member_text(data, codec)) or []
        except UnicodeError:
            return None

    extractor = _Extractor(reading.null_tokens, join=reading.join)
    extractor.delimiters = delimiters
    extractor.codec = codec
    columns: dict[str, list[str | None]] = {name: [] for name in reading.names}
    for first in range(0, len(messages), COLUMN_MESSAGES):
        for name, values in _read_columns(
            messages[first : first + COLUMN_MESSAGES], reading, extractor
        ).items():
            columns[name] += values
    return ParsedMember(columns=columns, ordinals=list(range(1, len(messages) + 1)))


def _read_columns(
    messages: list[str], reading: _Reading, extractor: _Extractor
) -> dict[str, list[str | None]]:
    """Each column's values over a clean member's messages, a column at a time."""
    separator = extractor.delimiters.field
    columns: dict[str, list[str | None]] = {}
    for segment_name, occurrence, is_msh, items in reading.groups:
        split = [
            line.split(separator) if line is not None else []
            for line in _segment_lines(messages, segment_name, occurrence)
        ]
        for item in items:
            columns[reading.names[item[0]]] = _read_column(split, item, is_msh, extractor)
    return {name: columns[name] for name in reading.names}


def _segment_lines(messages: list[str], segment: str, occurrence: int) -> list[str | None]:
    """Each message's `occurrence`-th `segment` line, blanks after it stripped (None where it has none).

    In a clean member every written line starts with its segment's name, so a line end then the name is one.
    """
    if segment == "MSH":  # a message's first line, and its only MSH segment
        return [
            message.partition("\r")[0].rstrip(_BLANK_TEXT) if occurrence == 1 else None
            for message in messages
        ]
    head = "\r" + segment
    lines: list[str | None] = []
    for message in messages:
        start = message.find(head)
        for _ in range(occurrence - 1):
            if start < 0:
                break
            start = message.find(head, start + 1)
        if start < 0:
            lines.append(None)
            continue
        end = message.find("\r", start + 1)
        lines.append(message[start + 1 : end if end > 0 else None].rstrip(_BLANK_TEXT))
    return lines


def _read_column(
    split: list[list[str]], item: _Item, is_msh: bool, extractor: _Extractor
) -> list[str | None]:
    """One column's values from each message's split segment (`[]` where it has none), as `_Extractor.fill`
    reads them: the common case for the whole column at once; by `_Extractor.value` a value holding an
    escape or repetitions to join, and every value of a path the common case does not cover.
    """
    _, number, common, wanted, subcomponent, path = item
    delimiters = extractor.delimiters
    if is_msh:
        # `_Extractor` reads MSH with the separator inserted as field 1 (MSH-1): one fewer here.
        def aligned(fields: list[str]) -> list[str]:
            return [fields[0], delimiters.field, *fields[1:]] if fields else fields

        position = number - 1
    else:

        def aligned(fields: list[str]) -> list[str]:
            return fields

        position = number
    if not common or subcomponent is not None:
        return [extractor.value(aligned(fields), path) for fields in split]

    raw = [fields[position] if len(fields) > position else "" for fields in split]
    by_value: list[int] = []  # the rows `_Extractor.value` reads
    repetition, escape = delimiters.repetition, delimiters.escape
    if repetition and repetition in "\r".join(raw):
        if extractor.join and path.repetition is None:
            by_value += [row for row, value in enumerate(raw) if repetition in value]
        else:  # the first repetition (a common path asks for no other)
            raw = [value.partition(repetition)[0] for value in raw]
    if escape and escape in "\r".join(raw):
        by_value += [row for row, value in enumerate(raw) if escape in value]

    component = delimiters.component
    if wanted is None:
        values = raw
    elif wanted == 1:
        values = [value.partition(component)[0] for value in raw] if component else raw
    elif component:
        values = [
            parts[wanted - 1] if len(parts := value.split(component, wanted)) >= wanted else ""
            for value in raw
        ]
    else:
        values = [""] * len(raw)
    null_tokens = extractor.null_tokens
    column = [value if value and value not in null_tokens else None for value in values]
    for row in by_value:
        column[row] = extractor.value(aligned(split[row]), path)
    return column


def _clean_headers_codec(headers: list[str], delimiters: _Delimiters, reading: _Reading) -> str | None:
    """The one codec every message declares first (its charset's, or the member's), when every header is
    accepted; else None. MSH-9 and MSH-18 decide all but the control id, so each distinct pair is read once.
    """
    separator, null_tokens = delimiters.field, reading.null_tokens
    distinct: dict[tuple[str, str], str] = {}
    for msh in headers:
        fields = msh.split(separator, 18)  # fields[n - 1] is MSH-n for n >= 2
        if len(fields) < 10 or not _first_component(fields[9], delimiters, null_tokens):
            return None  # no control id
        distinct.setdefault((fields[8], fields[17] if len(fields) > 17 else ""), msh)
    codecs_declared = set()
    for msh in distinct.values():
        header = _read_header(msh, null_tokens)
        if isinstance(header, tuple) or reading.header_problem(header) is not None:
            return None
        codecs_declared.add((reading.chain(header) or ("",))[0])
    codec = codecs_declared.pop()
    return codec if not codecs_declared and _splits_on_line_ends(codec) else None


def _read_by_message(data: bytes, member: str, reading: _Reading, fmt: Hl7Format) -> ParsedMember:
    """Every message checked, decoded and read on its own; a bad one is quarantined, the others load."""
    output: dict[str, list[str | None]] = {name: [] for name in reading.names}
    targets = [output[name] for name in reading.names]
    null_tokens = reading.null_tokens
    extractor = _Extractor(null_tokens, join=reading.join)
    default_chain = reading.default_chain

    lines = data.splitlines()
    spans, orphans = _split_member(lines, member)
    # Values are checked one by one only in a member holding a control character somewhere.
    control = fmt.control_characters if has_control_characters(data) else None

    result = ParsedMember(columns=output)
    for orphan_start, orphan_end in orphans:
        raw = b"\r".join(line.strip(_BLANK_BYTES) for line in lines[orphan_start:orphan_end]).strip(b"\r")
        result.rejects.append(
            RecordReject(
                member,
                None,
                orphan_start + 1,
                "hl7.orphan_segments",
                "lines outside any message (before its MSH segment or after a batch trailer) were skipped",
                _lenient_text(raw, default_chain),
            )
        )

    def reject(span: _MessageSpan, rule: str, reason: str, raw: bytes | str, chain: Sequence[str]) -> None:
        text = raw if isinstance(raw, str) else _lenient_text(raw, chain)
        # Trailing blank lines belong to no segment; keep the stored text to the message itself.
        text = text.rstrip("\r" + _BLANK_TEXT)
        result.rejects.append(RecordReject(member, span.ordinal, span.line, rule, reason, text))

    for span in spans:
        raw = b"\r".join(lines[span.start : span.end])
        # The MSH head is ASCII in every supported charset; latin-1 reads it without failing.
        header = _read_header(lines[span.start].strip(_BLANK_BYTES).decode("latin-1"), null_tokens)
        if isinstance(header, tuple):
            reject(span, *header, raw, default_chain)
            continue
        problem = reading.header_problem(header)
        if problem is not None:
            reject(span, *problem, raw, default_chain)
            continue
        decoded = _decode(raw, reading.chain(header) or ())
        if decoded is None:
            reject(span, "hl7.undecodable", "the message does not decode in any configured charset", raw, ())
            continue
        text, codec = decoded
        separator = header.delimiters.field
        found = _index_segments(text, separator, reading.needed)
        if isinstance(found, int):
            reason = (
                f"line {span.line + found} is not a segment (3 letters or digits, then the field separator)"
            )
            reject(span, "hl7.bad_segment", reason, text, ())
            continue

        # One extractor per member, re-pointed per message, saves building an object per message.
        extractor.delimiters = header.delimiters
        extractor.codec = codec
        values = reading.values(found, separator, extractor)
        if control is not None:
            reason = apply_control_policy(values, reading.names, control)
            if reason is not None:  # no raw text: the archive's original is kept in quarantine/
                rule = "hl7.control_character"
                result.rejects.append(RecordReject(member, span.ordinal, span.line, rule, reason))
                continue
        for target, value in zip(targets, values, strict=True):
            target.append(value)
        result.ordinals.append(span.ordinal)
    return result
