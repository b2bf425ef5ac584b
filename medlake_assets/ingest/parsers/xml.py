"""Parse one XML member (C-CDA documents, namespace urn:hl7-org:v3) into columnar string lists.

Hostile input is expected: a document with a DOCTYPE is refused before its internal subset is read, so
no entity (general or parameter, internal or external) is ever declared, expanded or fetched; the parser
itself also runs with entity resolution, DTD loading and network access off, as a second line of defence.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from lxml import etree

from medlake_assets.ingest.text import apply_control_policy, has_control_characters
from medlake_assets.ingest.types import ParsedMember, RecordReject
from medlake_assets.spec.models import ColumnSpec, XmlFormat

_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,  # keeps libxml2's caps on depth and node size (a text node over 10 MB is refused)
    "remove_comments": True,
}
_PROLOG_CHUNK = 64 * 1024
# (record XPath, [(column name, column XPath)]), cached per thread by `_compile`.
_Compiled = tuple[etree.XPath, list[tuple[str, etree.XPath]]]
_compiled = threading.local()
_ERROR_NAMES = {getattr(etree.ErrorTypes, name): name for name in dir(etree.ErrorTypes) if name.isupper()}


def parse_xml(data: bytes, *, member: str, columns: Sequence[ColumnSpec], fmt: XmlFormat) -> ParsedMember:
    """Parse an XML member: each element matched by `fmt.record_xpath` is one record.

    Each column's `source` is an XPath expression evaluated with the record element as context and
    `fmt.namespaces` as prefixes; a string result is kept as received, an empty string becomes None, a
    node-set gives its first node's string value, a whole number has no `.0`, a boolean is true/false.
    So `concat(hl7:id/@root, '^', hl7:id/@extension)` gives `'^ext'` when the root is missing, and `'^'`
    (not None) when both parts are.

    Bad input never raises; it comes back as one reject and no records:
    - a DOCTYPE (internal subset or external id): rule `xml.doctype`;
    - not well-formed (including libxml2's size and depth caps): rule `xml.malformed`, `line` from lxml;
    - nothing matched by `record_xpath` (e.g. the namespace is missing): rule `xml.no_record`, record None.
    A DOCTYPE or malformed member is rejected whole as record 1, whether it holds one document or many
    records, since no record can be located in a document that does not parse. The reasons name libxml2's
    error code and position, never document text. Invalid XPath in the metadata raises `ValueError`.

    The encoding comes from the XML declaration (or byte-order mark), so `data` stays bytes.
    """
    record_path, column_paths = _compile(columns, fmt)
    try:
        if _has_doctype(data):
            reason = "a DOCTYPE is not accepted (DTDs and entities are refused)"
            return _rejected(member, columns, "xml.doctype", reason)
        root = etree.fromstring(data, etree.XMLParser(**_PARSER_OPTIONS))
    except etree.XMLSyntaxError as error:
        return _rejected(member, columns, "xml.malformed", _describe(error), line=error.lineno or None)

    records = [node for node in _as_list(record_path(root)) if etree.iselement(node)]
    if not records:
        reason = f"no element matches the record XPath {fmt.record_xpath!r}"
        return _rejected(member, columns, "xml.no_record", reason, record=None)
    rows = [[_as_text(path(record)) for _, path in column_paths] for record in records]
    names = [name for name, _ in column_paths]
    result = ParsedMember(columns={name: [] for name in names})
    # XML 1.0 refuses C0 controls in text (xml.malformed), but DEL and its C0 cousins via a declared
    # encoding can reach a value; checked one by one only when the member holds one.
    control = fmt.control_characters if has_control_characters(data) else None
    for ordinal, (record, values) in enumerate(zip(records, rows, strict=True), 1):
        if control is not None and (reason := apply_control_policy(values, names, control)) is not None:
            line = record.sourceline
            result.rejects.append(RecordReject(member, ordinal, line, "xml.control_character", reason))
            continue
        for name, value in zip(names, values, strict=True):
            result.columns[name].append(value)
        result.ordinals.append(ordinal)
    return result


def _compile(columns: Sequence[ColumnSpec], fmt: XmlFormat) -> _Compiled:
    """The record and column expressions, compiled once per thread and source layout.

    Compiling a dozen expressions costs ~0.1 ms, as much as parsing a small document, so they are kept;
    per thread, because a compiled XPath object carries mutable state (its error log).
    """
    key = (
        fmt.record_xpath,
        tuple(sorted(fmt.namespaces.items())),
        tuple((c.name, c.source) for c in columns),
    )
    cache: dict[tuple[object, ...], _Compiled] = _compiled.__dict__.setdefault("cache", {})
    if key not in cache:
        record_path = _xpath(fmt.record_xpath, fmt.namespaces, "record_xpath")
        column_paths = [
            (column.name, _xpath(column.source, fmt.namespaces, f"column {column.name}"))
            for column in columns
        ]
        cache[key] = (record_path, column_paths)
    return cache[key]


def _xpath(expression: str, namespaces: dict[str, str], what: str) -> etree.XPath:
    # smart_strings=False: lxml's default "smart" strings keep a reference to their element, and with it the
    # whole parsed document, alive for as long as the value is.
    try:
        return etree.XPath(expression, namespaces=namespaces, smart_strings=False)
    except etree.XPathSyntaxError as error:
        raise ValueError(f"{what}: invalid XPath: {error}") from None


class _DoctypeFound(Exception):
    pass


class _RootReached(Exception):
    pass


class _PrologScanner:
    """A parser target that stops at the first DOCTYPE or element, whichever comes first.

    libxml2 reports a DOCTYPE (name and external id) before it reads the internal subset, and stops
    reading once a target callback raises, so the subset's entity declarations are never processed.
    """

    def doctype(self, name: str | None, public_id: str | None, system_url: str | None) -> None:
        raise _DoctypeFound

    def start(self, tag: str, attrib: dict[str, str], nsmap: dict[str, str] | None = None) -> None:
        raise _RootReached

    def close(self) -> None:
        return None


# libxml2 reads a document whose first bytes are none of these (UTF-16 or UTF-32 with or without a byte-order
# mark, EBCDIC's "<?xm") in UTF-8 or in the encoding its XML declaration names.
_WIDE_OR_EBCDIC_STARTS = (b"\x00", b"\xfe\xff", b"\xff\xfe", b"<\x00", b"\x4c\x6f\xa7\x94")
_DECLARED_ENCODING = re.compile(rb"<\?xml[^>]*?\sencoding\s*=\s*([\"'])([A-Za-z][A-Za-z0-9._-]*)\1")
# Encodings in which "<!DOCTYPE" can only be its ASCII bytes (any other one: the prolog is parsed).
_ASCII_CODECS = frozenset(
    {"utf-8", "utf8", "us-ascii", "ascii"}
    | {f"iso-8859-{n}" for n in range(1, 17)}
    | {f"windows-{n}" for n in range(1250, 1259)}
)


def _no_doctype_bytes(data: bytes) -> bool:
    """Whether the document certainly has no DOCTYPE without parsing it: its encoding is one where the
    keyword is ASCII bytes, and those bytes are nowhere in it. False says nothing (the prolog is parsed)."""
    if data.startswith(_WIDE_OR_EBCDIC_STARTS) or b"<!DOCTYPE" in data:
        return False
    prolog = data.removeprefix(b"\xef\xbb\xbf")
    if not prolog.startswith(b"<?xml"):
        return True  # UTF-8: libxml2 reads any other encoding only from a byte-order mark or a declaration
    end = prolog.find(b"?>")
    if end < 0:
        return False
    declaration = prolog[: end + 2]
    if b"encoding" not in declaration:
        return True
    declared = _DECLARED_ENCODING.match(declaration)
    return declared is not None and declared.group(2).decode().lower() in _ASCII_CODECS


def _has_doctype(data: bytes) -> bool:
    """Whether the prolog declares a DOCTYPE; reads only up to the root element's start tag, and nothing
    when the bytes already say there is none (`_no_doctype_bytes`: most documents; a sixth of parsing one).

    Raises `etree.XMLSyntaxError` when the prolog itself is not well-formed (or there is no root element).
    """
    if _no_doctype_bytes(data):
        return False
    parser = etree.XMLParser(target=_PrologScanner(), **_PARSER_OPTIONS)
    try:
        # Fed in chunks so that a large document costs one chunk, not a pass over all of it.
        for offset in range(0, len(data), _PROLOG_CHUNK):
            parser.feed(data[offset : offset + _PROLOG_CHUNK])
        parser.close()
    except _DoctypeFound:
        return True
    except _RootReached:
        return False
    return False


def _describe(error: etree.XMLSyntaxError) -> str:
    """libxml2's error name and position; its message may quote document text, so it is left out."""
    name = _ERROR_NAMES.get(error.code, f"code {error.code}")
    line, column = error.position if error.position else (None, None)
    where = f" at line {line}, column {column}" if line else ""
    return f"not well-formed XML: libxml2 {name}{where}"


def _rejected(
    member: str,
    columns: Sequence[ColumnSpec],
    rule: str,
    reason: str,
    *,
    record: int | None = 1,
    line: int | None = None,
) -> ParsedMember:
    """No records and one reject standing for the whole member."""
    return ParsedMember(
        columns={column.name: [] for column in columns},
        rejects=[RecordReject(member=member, record=record, line=line, rule=rule, reason=reason)],
    )


def _as_list(result: object) -> list[Any]:
    return result if isinstance(result, list) else [result]


def _as_text(result: object) -> str | None:
    """An XPath result as a bronze value: a string (None when empty) from any result type."""
    if isinstance(result, list):
        if not result:
            return None
        first = result[0]
        # An element's XPath string value is its descendant text; comments were dropped while parsing.
        result = "".join(first.itertext()) if etree.iselement(first) else first
    if isinstance(result, bool):
        result = "true" if result else "false"
    elif isinstance(result, float):
        result = str(int(result)) if result.is_integer() else str(result)
    return str(result) or None
