"""Pydantic models for one source type's metadata (design.md section 2).

Every model forbids unknown keys so a typo in YAML fails the definitions load instead of being ignored.
"""

from __future__ import annotations

import os
import re
import zoneinfo
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IDENTIFIER = r"^[a-z][a-z0-9_]*$"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PasswordRef(StrictModel):
    """A reference to the secret holding an archive password, never the password itself.

    With `per_facility`, `<env>__<FACILITY>` (upper-cased, non-alphanumerics as `_`) wins over `<env>`.
    """

    env: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    per_facility: bool = True

    def env_names(self, facility: str) -> list[str]:
        names = [self.env]
        if self.per_facility:
            names.insert(0, f"{self.env}__{facility_env_suffix(facility)}")
        return names

    def resolve(self, facility: str, environ: Mapping[str, str] | None = None) -> str | None:
        environ = os.environ if environ is None else environ
        for name in self.env_names(facility):
            if environ.get(name):
                return environ[name]
        return None


def facility_env_suffix(facility: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", facility.upper())


class ArchiveLimits(StrictModel):
    """Caps that stop zip bombs and oversized feeds before they exhaust memory."""

    max_archive_bytes: int = 64 * 1024**2
    max_total_uncompressed_bytes: int = 512 * 1024**2
    max_member_bytes: int = 256 * 1024**2
    max_ratio: float = 200.0
    max_members: int = 10_000


class LandingSpec(StrictModel):
    key_pattern: str
    archives: list[Literal["zip", "gzip", "none"]] = Field(
        default_factory=lambda: ["zip"], min_length=1, description="accepted kinds, told apart by magic bytes"
    )
    password: PasswordRef | None = None
    member_pattern: str = ".*"
    encoding: str = "utf-8"
    encoding_fallbacks: list[str] = Field(default_factory=lambda: ["cp1252", "latin-1"])
    limits: ArchiveLimits = Field(default_factory=ArchiveLimits)

    @field_validator("key_pattern", "member_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from error
        del compiled
        return value

    @model_validator(mode="after")
    def _key_pattern_groups(self) -> LandingSpec:
        groups = set(re.compile(self.key_pattern).groupindex)
        missing = {"facility", "yyyy", "mm", "dd"} - groups
        if missing:
            raise ValueError(f"key_pattern needs the named groups {sorted(missing)}")
        if "zip" in self.archives and self.password is None:
            raise ValueError("a zip source needs `password: {env: ...}` (a secret reference)")
        return self

    @property
    def key_regex(self) -> re.Pattern[str]:
        return re.compile(self.key_pattern)

    @property
    def member_regex(self) -> re.Pattern[str]:
        return re.compile(self.member_pattern)


ControlCharacters = Literal["strip", "reject"]
CONTROL_CHARACTERS_HELP = (
    "a value holding a control character (C0 but tab, line feed, carriage return; DEL): `reject` its record "
    "(rule <format>.control_character) or `strip` the characters"
)


class CsvFormat(StrictModel):
    kind: Literal["csv"] = "csv"
    control_characters: ControlCharacters = Field(default="reject", description=CONTROL_CHARACTERS_HELP)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    header: bool = True
    null_tokens: list[str] = Field(default_factory=lambda: [""])


class Hl7Format(StrictModel):
    kind: Literal["hl7v2"] = "hl7v2"
    control_characters: ControlCharacters = Field(default="reject", description=CONTROL_CHARACTERS_HELP)
    message_types: list[str] = Field(default_factory=list, description="e.g. ['ADT^A01']; empty = all")
    repeat: Literal["first", "join"] = "first"
    null_tokens: list[str] = Field(default_factory=lambda: ['""'])


class XmlFormat(StrictModel):
    kind: Literal["xml"] = "xml"
    control_characters: ControlCharacters = Field(default="reject", description=CONTROL_CHARACTERS_HELP)
    record_xpath: str
    namespaces: dict[str, str] = Field(default_factory=dict)


FormatSpec = Annotated[CsvFormat | Hl7Format | XmlFormat, Field(discriminator="kind")]

ColumnType = Literal["string", "int", "long", "double", "boolean", "date", "timestamp", "decimal"]
# What `silver_deid.<source>` does with a column (serving/deid.py): a column without one is left out.
DeidTreatment = Literal["keep", "token", "shift", "drop"]


class ColumnSpec(StrictModel):
    name: str = Field(pattern=IDENTIFIER)
    type: ColumnType = "string"
    source: str = Field(description="CSV header, HL7 path like PID-3.1, or an XPath string expression")
    format: str | None = Field(
        default=None,
        description="dates and timestamps: `hl7`, `iso` (default) or a strptime pattern; decimals: `P,S`",
    )
    nullable: bool = True
    pii: bool = False
    deid: DeidTreatment | None = Field(
        default=None,
        description="in silver_deid: keep as is, token (keyed HMAC), shift (dates: the patient's offset) or "
        "drop; a column without it is dropped",
    )
    description: str = ""
    transforms: list[str] = Field(
        default_factory=list,
        description="shared cleaning transforms (silver/cleaning.py), in order, before the cast",
    )
    null_tokens: list[str] | None = Field(
        default=None,
        description="tokens the `null_tokens` transform nulls; default: the format's, else a shared list",
    )
    timezone: str | None = Field(
        default=None, description="IANA zone of timestamps without an offset; default UTC"
    )

    @field_validator("transforms")
    @classmethod
    def _known_transforms(cls, value: list[str]) -> list[str]:
        from medlake_assets.silver.cleaning import TRANSFORMS

        unknown = [name for name in value if name not in TRANSFORMS]
        if unknown:
            raise ValueError(f"unknown transforms {unknown}; known: {sorted(TRANSFORMS)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name like Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _settings_fit_type(self) -> ColumnSpec:
        from medlake_assets.silver.casts import check_format

        try:
            check_format(self.type, self.format)
        except ValueError as error:
            raise ValueError(f"format: {error}") from None
        if self.timezone is not None and self.type != "timestamp":
            raise ValueError("timezone: only timestamp columns take a time zone")
        if self.null_tokens is not None and "null_tokens" not in self.transforms:
            raise ValueError("null_tokens: given, but `null_tokens` is not among the column's transforms")
        self._check_deid()
        return self

    def _check_deid(self) -> None:
        is_date = self.type in ("date", "timestamp")
        if self.deid == "shift" and not is_date:
            raise ValueError(f"deid: only date and timestamp columns are shifted, this one is {self.type}")
        if self.deid == "keep" and is_date:
            # A real date beside the patient's shifted ones would give the offset away.
            raise ValueError("deid: a date or timestamp is `shift` or `drop`, never `keep`")
        if self.deid == "keep" and self.pii:
            raise ValueError("deid: a pii column is `token`, `shift` or `drop`, never `keep`")


class DeleteMarker(StrictModel):
    """A change row whose `column` equals `value` deletes its key."""

    column: str
    value: str


class WriteSpec(StrictModel):
    mode: Literal["append", "upsert", "scd2"] = "append"
    primary_key: list[str] = Field(default_factory=list)
    sequence_by: list[str] = Field(default_factory=list)
    delete_marker: DeleteMarker | None = None
    sequence_ranks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="ordinal ranks of text sequence columns, e.g. {result_status: [P, F, C]}",
    )
    partition_by: list[str] = Field(
        default_factory=list,
        description="Iceberg partition fields: `col` or `day(col)`/`month(col)`/`bucket(n, col)`",
    )
    sort_by: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _keys_for_merges(self) -> WriteSpec:
        if self.mode != "append" and not (self.primary_key and self.sequence_by):
            raise ValueError(f"write mode {self.mode!r} needs primary_key and sequence_by")
        unranked = sorted(set(self.sequence_ranks) - set(self.sequence_by))
        if unranked:
            raise ValueError(f"sequence_ranks names columns not in sequence_by: {unranked}")
        return self

    @property
    def delete_marker_tuple(self) -> tuple[str, str] | None:
        return (self.delete_marker.column, self.delete_marker.value) if self.delete_marker else None


class CheckSpec(StrictModel):
    rule: Literal["not_null", "unique", "range", "allowed", "regex", "freshness"]
    column: str | None = None
    columns: list[str] = Field(default_factory=list)
    min: float | None = None
    max: float | None = None
    values: list[str] = Field(default_factory=list)
    pattern: str | None = None
    max_lag_minutes: int | None = None
    severity: Literal["error", "warn"] = "error"


class IngestSpec(StrictModel):
    """How the sensor turns landed archives into runs."""

    max_archives_per_run: int = Field(default=500, ge=1)
    max_bytes_per_run: int = Field(default=64 * 1024**2, ge=1)
    open_days: int = Field(default=2, ge=1, description="landing days before today the sensor still lists")
    earlier_days_every_minutes: int = Field(
        default=5,
        ge=1,
        description="how often the sensor lists the open days before today (only late files land there); "
        "a source's folder of today is listed when a run can take what it finds",
    )
    max_quarantine_rate: float = Field(default=0.05, ge=0, le=1)


class FacilityQuality(StrictModel):
    """One facility's own gate and freshness settings; an unset field takes the source's."""

    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    min_rows: int | None = Field(default=None, ge=1)
    max_lag_minutes: int | None = Field(
        default=None, ge=1, description="the facility's freshness limit, instead of its learned cadence"
    )


class FacilityFreshness(StrictModel):
    """How each facility's usual cadence is learned from its arrivals in the ledger (`meta.freshness`)."""

    lookback_days: int = Field(
        default=14, ge=1, description="arrivals of these landing days teach the cadence"
    )
    late_factor: float = Field(default=1.5, gt=1, description="stale after this many usual intervals")
    min_deliveries: int = Field(default=6, ge=2, description="below this, the source's SLA applies instead")
    min_lag_minutes: int = Field(default=10, ge=1, description="floor of a learned limit")


class QualitySpec(StrictModel):
    max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="share of a facility's rows in a batch failing error rules above which they are held",
    )
    min_rows: int = Field(
        default=20,
        ge=1,
        description="a facility's slice of a batch smaller than this counts as this many rows for the rate",
    )
    facilities: dict[str, FacilityQuality] = Field(default_factory=dict)
    facility_freshness: FacilityFreshness = Field(default_factory=FacilityFreshness)

    def facility(self, facility: str) -> FacilityQuality:
        """The facility's settings with the source's filled in where it sets none."""
        own = self.facilities.get(facility, FacilityQuality())
        return FacilityQuality(
            max_error_rate=self.max_error_rate if own.max_error_rate is None else own.max_error_rate,
            min_rows=self.min_rows if own.min_rows is None else own.min_rows,
            max_lag_minutes=own.max_lag_minutes,
        )


class RetentionSpec(StrictModel):
    snapshot_days: int = 30
    min_snapshots: int = 5


class SourceSpec(StrictModel):
    name: str = Field(pattern=IDENTIFIER)
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    landing: LandingSpec
    format: FormatSpec
    columns: list[ColumnSpec] = Field(min_length=1)
    write: WriteSpec = Field(default_factory=WriteSpec)
    checks: list[CheckSpec] = Field(default_factory=list)
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    derived: list[Literal["encounters"]] = Field(
        default_factory=list,
        description="silver tables folded from this source's silver table: `encounters` (one row per visit, "
        "from HL7 ADT events); at most one source may derive each",
    )

    @model_validator(mode="after")
    def _columns_known(self) -> SourceSpec:
        names = [column.name for column in self.columns]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"duplicate column names {duplicated}")
        referenced = [
            *self.write.primary_key,
            *self.write.sequence_by,
            *([self.write.delete_marker.column] if self.write.delete_marker else []),
            *self.write.sort_by,
            *[
                name
                for check in self.checks
                for name in ([check.column] if check.column else []) + check.columns
            ],
        ]
        unknown = sorted(set(referenced) - set(names))
        if unknown:
            raise ValueError(f"unknown columns referenced: {unknown}")
        return self

    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def pii_columns(self) -> list[str]:
        return [column.name for column in self.columns if column.pii]
