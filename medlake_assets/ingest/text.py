"""Turn a member's bytes into text: byte-order marks first, then the declared encoding and its fallbacks."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence

from medlake_assets.ingest.types import MemberRejected

# Longest marks first: the UTF-32-LE mark begins with the UTF-16-LE one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes, *, member: str, encoding: str, fallbacks: Sequence[str]) -> str:
    """Decode `data`, trying a byte-order mark's encoding, then `encoding`, then each fallback in order.

    A byte-order mark is stripped and its encoding tried first, since it is stronger evidence than the
    source's declaration. Single-byte encodings that map all 256 bytes (`latin-1`) never fail, so a fallback
    list ending in `latin-1` always decodes (possibly into the wrong characters, never into an error).
    An unknown encoding name is a metadata error and raises `LookupError`.

    Raises `MemberRejected("text.undecodable")` when no candidate decodes; the reason names the encodings
    tried and the first bad byte offset, never the bytes themselves.
    """
    candidates = [encoding, *fallbacks]
    skipped = 0
    for bom, bom_encoding in BYTE_ORDER_MARKS:
        if data.startswith(bom):
            skipped = len(bom)
            data = data[skipped:]
            candidates.insert(0, bom_encoding)
            break
    first_error: UnicodeDecodeError | None = None
    for candidate in dict.fromkeys(candidates):
        try:
            return data.decode(candidate)
        except UnicodeDecodeError as error:
            first_error = first_error or error
    tried = ", ".join(dict.fromkeys(candidates))
    where = f" (first bad byte at offset {skipped + first_error.start})" if first_error else ""
    raise MemberRejected("text.undecodable", f"not valid text in any of {tried}{where}", member=member)


# Control characters no value should hold: C0 but tab, line feed and carriage return, and DEL. They are
# ASCII, so the same bytes in every ASCII-compatible encoding.
_CONTROL_CODES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_characters(data: bytes) -> bool:
    """Whether ASCII-compatible `data` holds a control character anywhere (one pass at C speed, so that the
    per-value check runs only for the rare member that has one)."""
    return len(data.translate(None, _CONTROL_CODES)) != len(data)


def control_character_reason(column: str, value: str) -> str:
    """Why a record is rejected: the column and the character's code point, never the value."""
    found = CONTROL_CHARACTER.search(value)
    code = f"U+{ord(found.group()):04X}" if found else "a control character"
    return f"column {column} holds control character {code} (format.control_characters: reject)"


def apply_control_policy(values: list[str | None], names: Sequence[str], policy: str) -> str | None:
    """One record's values under `format.control_characters`: with `strip`, control characters are removed
    from `values` in place (a value left empty becomes None); with `reject`, the reason to reject the
    record when a value holds one (None when none does)."""
    for index, value in enumerate(values):
        if value and CONTROL_CHARACTER.search(value):
            if policy != "strip":
                return control_character_reason(names[index], value)
            values[index] = CONTROL_CHARACTER.sub("", value) or None
    return None
