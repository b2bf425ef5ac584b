"""One parser per declared format; each turns one archive member into columnar records."""

from __future__ import annotations

from collections.abc import Iterator

from medlake_assets.ingest.parsers.csv import ArrowMember
from medlake_assets.ingest.types import Member, ParsedMember
from medlake_assets.spec import CsvFormat, Hl7Format, SourceSpec, XmlFormat


def parse_member(member: Member, spec: SourceSpec) -> ParsedMember:
    """Parse one member with the parser its source's `format.kind` names (Python lists of strings)."""
    fmt = spec.format
    text = {"encoding": spec.landing.encoding, "fallbacks": spec.landing.encoding_fallbacks}
    if isinstance(fmt, CsvFormat):
        from medlake_assets.ingest.parsers.csv import parse_csv

        return parse_csv(member.data, member=member.name, columns=spec.columns, fmt=fmt, **text)
    if isinstance(fmt, Hl7Format):
        from medlake_assets.ingest.parsers.hl7 import parse_hl7

        return parse_hl7(member.data, member=member.name, columns=spec.columns, fmt=fmt, **text)
    if isinstance(fmt, XmlFormat):
        from medlake_assets.ingest.parsers.xml import parse_xml

        return parse_xml(member.data, member=member.name, columns=spec.columns, fmt=fmt)
    raise TypeError(f"source {spec.name}: no parser for format {type(fmt).__name__}")


def parse_member_pieces(member: Member, spec: SourceSpec) -> Iterator[ArrowMember | ParsedMember]:
    """A member's records in pieces: a CSV member as Arrow, straight from Polars when the file is regular,
    about 8 MiB of text at a time (`parse_csv_arrow_chunks`); any other member whole, as lists (converted
    to Arrow together with other small members', `ingest/pipeline.py`). A `MemberRejected` comes first."""
    fmt = spec.format
    if isinstance(fmt, CsvFormat):
        from medlake_assets.ingest.parsers.csv import parse_csv_arrow_chunks

        yield from parse_csv_arrow_chunks(
            member.data,
            member=member.name,
            columns=spec.columns,
            fmt=fmt,
            encoding=spec.landing.encoding,
            fallbacks=spec.landing.encoding_fallbacks,
        )
        return
    yield parse_member(member, spec)
