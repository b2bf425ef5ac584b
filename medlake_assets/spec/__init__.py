"""Typed source metadata: the YAML in `metadata/sources/` validated up front."""

from medlake_assets.spec.loader import SpecError, load_source, load_sources
from medlake_assets.spec.models import (
    ArchiveLimits,
    ColumnSpec,
    CsvFormat,
    Hl7Format,
    SourceSpec,
    XmlFormat,
)

__all__ = [
    "ArchiveLimits",
    "ColumnSpec",
    "CsvFormat",
    "Hl7Format",
    "SourceSpec",
    "SpecError",
    "XmlFormat",
    "load_source",
    "load_sources",
]
