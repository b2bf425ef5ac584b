"""Casts from received strings to declared types, as vectorized Polars expressions.

Every cast strips surrounding whitespace first (it never carries meaning in a number or a date) and gives
null for a value it cannot read; the caller compares with the input to report a failure instead of
silently losing the value.

Dates and timestamps take a declared `format`:
- `hl7`: HL7 v2 / C-CDA `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`. Partial precision is valid and fills the
  missing parts with the start of the period (`1980` is 1980-01-01 00:00); the fraction keeps up to 6
  digits (microseconds).
- `iso` (the default): ISO 8601 `YYYY-MM-DD[(T| )HH:MM[:SS[.f+]]][Z|+HH[:MM]|+HHMM]`.
- anything else with `%` in it: a strptime format (Polars/chrono), e.g. `%d/%m/%Y %H:%M`.

Timestamps become `Datetime("us", "UTC")`. A value with an offset is converted with it; a value without
one is read in the column's time zone (IANA name, default UTC; an ambiguous local time in the autumn
DST overlap takes the earlier instant, a local time in the spring gap does not exist and fails).
A date takes the calendar date as written (no time zone conversion: a birth date is not an instant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import polars as pl

TIMESTAMP: Final = pl.Datetime("us", "UTC")
DEFAULT_DECIMAL: Final = (38, 9)
MAX_OFFSET_MINUTES: Final = 14 * 60  # UTC+14 (Kiribati) is the largest offset in use

HL7_PATTERN: Final = (
    r"^(?<y>\d{4})(?:(?<mo>\d{2})(?:(?<d>\d{2})(?:(?<h>\d{2})(?:(?<mi>\d{2})(?:(?<s>\d{2})"
    r"(?:\.(?<f>\d+))?)?)?)?)?)?(?<off>[+-]\d{4})?$"
)
ISO_PATTERN: Final = (
    r"^(?<y>\d{4})-(?<mo>\d{2})-(?<d>\d{2})(?:[T ](?<h>\d{2}):(?<mi>\d{2})(?::(?<s>\d{2})"
    r"(?:[.,](?<f>\d+))?)?)?(?<off>Z|[+-]\d{2}(?::?\d{2})?)?$"
)
HL7_SHAPE: Final = "YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]"
ISO_SHAPE: Final = "YYYY-MM-DD[THH:MM[:SS[.f]]][Z|+HH:MM]"
PRECISIONS: Final = ("year", "month", "day", "hour", "minute", "second", "fraction")

PARSED_TYPES: Final = ("decimal", "date", "timestamp")
"""Types read by a pattern (a regex, strptime): the costly casts, worth running once per distinct value."""

BOOLEANS: Final = {
    **dict.fromkeys(["true", "t", "yes", "y", "1"], True),
    **dict.fromkeys(["false", "f", "no", "n", "0"], False),
}


@dataclass(frozen=True)
class Cast:
    """The typed value of one column, companion columns (name suffix -> expression), and the failure reason.

    `steps` are temporary columns to compute first, in order (one `with_columns` each); `value` and
    `companions` may refer to them. Polars does not share a sub-expression inside `when/then`, so a regex
    used by the value, the offset and the precision is computed once this way. `reason` describes the
    expected shape, never the value.
    """

    value: pl.Expr
    reason: str
    companions: dict[str, pl.Expr] = field(default_factory=dict)
    steps: tuple[dict[str, pl.Expr], ...] = ()


def polars_type(type_: str, format_: str | None = None) -> pl.DataType:
    """The Polars type of a declared column type."""
    match type_:
        case "string":
            return pl.String()
        case "int":
            return pl.Int32()
        case "long":
            return pl.Int64()
        case "double":
            return pl.Float64()
        case "boolean":
            return pl.Boolean()
        case "date":
            return pl.Date()
        case "timestamp":
            return TIMESTAMP
        case "decimal":
            return pl.Decimal(*decimal_shape(format_))
    raise ValueError(f"unknown column type {type_!r}")


def companion_types(type_: str, format_: str | None) -> dict[str, pl.DataType]:
    """Companion columns by suffix: `_offset` for every timestamp, `_precision` for `hl7` dates/timestamps."""
    companions: dict[str, pl.DataType] = {}
    if type_ == "timestamp":
        companions["_offset"] = pl.String()
    if type_ in ("date", "timestamp") and format_ == "hl7":
        companions["_precision"] = pl.String()
    return companions


def decimal_shape(format_: str | None) -> tuple[int, int]:
    """(precision, scale) from a decimal column's `format: "P,S"`, default (38, 9)."""
    if format_ is None:
        return DEFAULT_DECIMAL
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", format_)
    if not match:
        raise ValueError(f"a decimal format is 'precision,scale' (e.g. '10,2'), got {format_!r}")
    precision, scale = int(match[1]), int(match[2])
    if not 1 <= precision <= 38 or scale > precision:
        raise ValueError(f"a decimal needs 1 <= precision <= 38 and scale <= precision, got {format_!r}")
    return precision, scale


def check_format(type_: str, format_: str | None) -> None:
    """Raise ValueError if `format_` makes no sense for `type_` (called when metadata loads)."""
    if format_ is None:
        return
    if type_ == "decimal":
        decimal_shape(format_)
    elif type_ in ("date", "timestamp"):
        if format_ in ("hl7", "iso"):
            return
        if "%" not in format_:
            raise ValueError(
                f"a {type_} format is 'hl7', 'iso' or a strptime pattern with %, got {format_!r}"
            )
        # chrono ignores a bad pattern and yields null, so prove the pattern reads what it writes.
        sample = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)
        try:
            unreadable = cast(pl.Series([sample.strftime(format_)]), type_, format_).null_count()
        except pl.exceptions.PolarsError as error:
            detail = str(error).splitlines()[0]
            raise ValueError(
                f"the {type_} format {format_!r} cannot read a value it writes: {detail}"
            ) from None
        if unreadable:
            raise ValueError(f"the {type_} format {format_!r} cannot read a value it writes")
    else:
        raise ValueError(f"type {type_!r} takes no format")


def cast(series: pl.Series, type_: str, format_: str | None = None, timezone: str | None = None) -> pl.Series:
    """`cast_column` applied to one Series (for checks and tests)."""
    return cast_frame(series, type_, format_, timezone)["value"]


def cast_frame(
    series: pl.Series, type_: str, format_: str | None = None, timezone: str | None = None
) -> pl.DataFrame:
    """`cast_column` applied to one Series: a frame of `value` and the companions by suffix (`_offset`)."""
    planned = cast_column(pl.col("v"), type_, format_, timezone)
    frame = series.to_frame("v").lazy()
    for step in planned.steps:
        frame = frame.with_columns(**step)
    companions = [expr.alias(suffix) for suffix, expr in planned.companions.items()]
    return frame.select(planned.value.alias("value"), *companions).collect()


def cast_column(
    expr: pl.Expr,
    type_: str,
    format_: str | None = None,
    timezone: str | None = None,
    *,
    scratch: str = "__cast",
) -> Cast:
    """The cast of a string expression to a declared type; null where the input is null or unreadable.

    Temporary columns in `steps` are named `<scratch>_<what>`: give each column its own `scratch`.
    """
    if type_ == "string":
        return Cast(expr, "")
    text_name = f"{scratch}_text"
    steps: tuple[dict[str, pl.Expr], ...] = ({text_name: expr.str.strip_chars()},)
    text = pl.col(text_name)
    match type_:
        case "int" | "long":
            bits = 32 if type_ == "int" else 64
            return Cast(text.cast(polars_type(type_), strict=False), f"not a {bits}-bit integer", steps=steps)
        case "double":
            number = text.cast(pl.Float64, strict=False)
            return Cast(pl.when(number.is_finite()).then(number), "not a finite number", steps=steps)
        case "boolean":
            value = text.str.to_lowercase().replace_strict(BOOLEANS, default=None, return_dtype=pl.Boolean)
            return Cast(value, "not a boolean (true/false, t/f, yes/no, y/n, 1/0)", steps=steps)
        case "decimal":
            planned = _decimal(text, format_)
        case "date":
            planned = _date(text, format_, scratch)
        case "timestamp":
            planned = _timestamp(text, format_, timezone or "UTC", scratch)
        case _:
            raise ValueError(f"unknown column type {type_!r}")
    return Cast(planned.value, planned.reason, planned.companions, steps + planned.steps)


def _decimal(text: pl.Expr, format_: str | None) -> Cast:
    precision, scale = decimal_shape(format_)
    whole = precision - scale
    # Polars rounds extra fraction digits silently; a value that does not fit is a failure instead.
    parts = text.str.extract_groups(r"^[+-]?(?<i>\d*)(?:\.(?<f>\d*))?$")
    integer = parts.struct.field("i")
    fraction = parts.struct.field("f").fill_null("")
    fits = (
        (integer.str.len_bytes() + fraction.str.len_bytes() > 0)
        & (integer.str.strip_chars_start("0").str.len_bytes() <= whole)
        & (fraction.str.len_bytes() <= scale)
    )
    value = pl.when(fits).then(text.cast(pl.Decimal(precision, scale), strict=False))
    return Cast(value, f"not a decimal with at most {whole} integer and {scale} fraction digits")


def _parts(text: pl.Expr, format_: str) -> pl.Expr:
    return text.str.extract_groups(HL7_PATTERN if format_ == "hl7" else ISO_PATTERN)


def _local(parts: pl.Expr) -> pl.Expr:
    """The naive local date-time the parts spell, null if a part is out of range (month 13, Feb 30)."""
    part = parts.struct.field
    fraction = part("f").str.slice(0, 6).str.pad_end(6, "0").fill_null("000000")
    text = pl.concat_str(
        part("y"),
        part("mo").fill_null("01"),
        part("d").fill_null("01"),
        part("h").fill_null("00"),
        part("mi").fill_null("00"),
        part("s").fill_null("00"),
        fraction,
    )
    return text.str.strptime(pl.Datetime("us"), "%Y%m%d%H%M%S%6f", strict=False)


def _precision(parts: pl.Expr) -> pl.Expr:
    part = parts.struct.field
    names = ["f", "s", "mi", "h", "d", "mo", "y"]
    chain = pl.when(part(names[0]).is_not_null()).then(pl.lit(PRECISIONS[-1]))
    for name, precision in zip(names[1:], reversed(PRECISIONS[:-1]), strict=True):
        chain = chain.when(part(name).is_not_null()).then(pl.lit(precision))
    return chain


def _date(text: pl.Expr, format_: str | None, scratch: str) -> Cast:
    if format_ == "hl7":
        parts, value = f"{scratch}_parts", f"{scratch}_value"
        steps = ({parts: _parts(text, "hl7")}, {value: _local(pl.col(parts)).dt.date()})
        precision = pl.when(pl.col(value).is_not_null()).then(_precision(pl.col(parts)))
        return Cast(pl.col(value), f"not an HL7 date {HL7_SHAPE}", {"_precision": precision}, steps)
    pattern = "%Y-%m-%d" if format_ in (None, "iso") else format_
    return Cast(text.str.strptime(pl.Date, pattern, strict=False), f"not a date in the format {pattern}")


def _timestamp(text: pl.Expr, format_: str | None, timezone: str, scratch: str) -> Cast:
    zone_note = "" if timezone == "UTC" else f", or a local time that does not exist in {timezone}"
    no_offset = {"_offset": pl.lit(None, dtype=pl.String)}
    if format_ not in (None, "iso", "hl7"):
        parsed = text.str.strptime(pl.Datetime("us"), format_, strict=False)
        if any(token in format_ for token in ("%z", "%:z", "%#z")):
            # chrono applies the parsed offset itself; the offset is not kept for custom formats.
            value = parsed.dt.convert_time_zone("UTC")
        else:
            value = _in_zone(parsed, timezone)
        return Cast(value, f"not a timestamp in the format {format_}{zone_note}", no_offset)
    format_ = format_ or "iso"
    parts, local, offset, minutes, value = (
        f"{scratch}_{what}" for what in ("parts", "local", "offset", "minutes", "value")
    )
    steps = (
        {parts: _parts(text, format_)},
        {local: _local(pl.col(parts)), offset: _normalized_offset(pl.col(parts).struct.field("off"))},
        {minutes: _offset_minutes(pl.col(offset))},
        {
            value: pl.when(pl.col(offset).is_null())
            .then(_in_zone(pl.col(local), timezone))
            .when(pl.col(minutes).abs() <= MAX_OFFSET_MINUTES)
            .then((pl.col(local) - pl.duration(minutes=pl.col(minutes))).dt.replace_time_zone("UTC"))
        },
    )
    known = pl.col(value).is_not_null()
    companions = {"_offset": pl.when(known).then(pl.col(offset))}
    if format_ == "hl7":
        companions["_precision"] = pl.when(known).then(_precision(pl.col(parts)))
    shape = f"an HL7 timestamp {HL7_SHAPE}" if format_ == "hl7" else f"an ISO 8601 timestamp {ISO_SHAPE}"
    return Cast(pl.col(value), f"not {shape} with an offset within +/-14:00{zone_note}", companions, steps)


def _in_zone(local: pl.Expr, timezone: str) -> pl.Expr:
    naive = local.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
    return naive.dt.convert_time_zone("UTC")


def _normalized_offset(offset: pl.Expr) -> pl.Expr:
    """`Z`, `+02`, `+02:00`, `+0200` all become `+HHMM` (`Z` is `+0000`: UTC, stated by the sender)."""
    digits = offset.str.replace(":", "", literal=True).str.pad_end(5, "0")
    return pl.when(offset == "Z").then(pl.lit("+0000")).otherwise(digits)


def _offset_minutes(offset: pl.Expr) -> pl.Expr:
    hours = offset.str.slice(1, 2).cast(pl.Int32)
    minutes = offset.str.slice(3, 2).cast(pl.Int32)
    sign = pl.when(offset.str.starts_with("-")).then(-1).otherwise(1)
    # Minutes of 60 or more are not an offset: make the total out of range so the value fails.
    total = pl.when(minutes < 60).then(hours * 60 + minutes).otherwise(MAX_OFFSET_MINUTES + 1)
    return sign * total
