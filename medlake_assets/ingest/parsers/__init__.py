"""One parser per declared format; each turns one archive member into columnar records."""

from __future__ import annotations

from medlake_assets.ingest.types import Member, ParsedMember
from medlake_assets.spec import CsvFormat, Hl7Format, SourceSpec, XmlFormat


def parse_member(member: Member, spec: SourceSpec) -> ParsedMember:
    """Parse one member with the parser its source's `format.kind` names."""
    fmt = spec.format
    landing = spec.landing
    if isinstance(fmt, CsvFormat):
        from medlake_assets.ingest.parsers.csv import parse_csv

        return parse_csv(
            member.data,
            member=member.name,
            columns=spec.columns,
            fmt=fmt,
            encoding=landing.encoding,
            fallbacks=landing.encoding_fallbacks,
        )
    if isinstance(fmt, Hl7Format):
        from medlake_assets.ingest.parsers.hl7 import parse_hl7

        return parse_hl7(
            member.data,
            member=member.name,
            columns=spec.columns,
            fmt=fmt,
            encoding=landing.encoding,
            fallbacks=landing.encoding_fallbacks,
        )
    if isinstance(fmt, XmlFormat):
        from medlake_assets.ingest.parsers.xml import parse_xml

        return parse_xml(member.data, member=member.name, columns=spec.columns, fmt=fmt)
    raise TypeError(f"source {spec.name}: no parser for format {type(fmt).__name__}")
