"""Casts to declared types: every HL7 / ISO / strptime variant, time zones, numbers, booleans, decimals."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from medlake_assets.silver.casts import TIMESTAMP, cast, cast_frame, check_format, polars_type


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def cast_with_companions(
    values: list[str | None], type_: str, format_: str | None, timezone: str | None = None
) -> pl.DataFrame:
    return cast_frame(pl.Series(values, dtype=pl.String), type_, format_, timezone)


@pytest.mark.parametrize(
    ("text", "instant", "offset", "precision"),
    [
        ("2026", utc(2026, 1, 1), None, "year"),
        ("202611", utc(2026, 11, 1), None, "month"),
        ("20261126", utc(2026, 11, 26), None, "day"),
        ("2026112608", utc(2026, 11, 26, 8), None, "hour"),
        ("202611260815", utc(2026, 11, 26, 8, 15), None, "minute"),
        ("20261126081530", utc(2026, 11, 26, 8, 15, 30), None, "second"),
        ("20261126081530.1", utc(2026, 11, 26, 8, 15, 30, 100_000), None, "fraction"),
        ("20261126081530.1234", utc(2026, 11, 26, 8, 15, 30, 123_400), None, "fraction"),
        # Digits beyond microseconds are cut, not rounded.
        ("20261126081530.12345678", utc(2026, 11, 26, 8, 15, 30, 123_456), None, "fraction"),
        ("20261126081530+0200", utc(2026, 11, 26, 6, 15, 30), "+0200", "second"),
        ("202611260815-0500", utc(2026, 11, 26, 13, 15), "-0500", "minute"),
        ("20261126081530.1234+0530", utc(2026, 11, 26, 2, 45, 30, 123_400), "+0530", "fraction"),
        ("20261126+0200", utc(2026, 11, 25, 22), "+0200", "day"),
        ("20261126081530+0000", utc(2026, 11, 26, 8, 15, 30), "+0000", "second"),
        ("  20261126081530\t", utc(2026, 11, 26, 8, 15, 30), None, "second"),
        ("20240229", utc(2024, 2, 29), None, "day"),
        # Second 60 is a leap second (chrono reads it as the next minute).
        ("20261231235960", utc(2027, 1, 1), None, "second"),
    ],
)
def test_hl7_timestamp_variants(text, instant, offset, precision):
    frame = cast_with_companions([text], "timestamp", "hl7")
    assert frame.schema == {"value": TIMESTAMP, "_offset": pl.String, "_precision": pl.String}
    assert frame.row(0) == (instant, offset, precision)


@pytest.mark.parametrize(
    "text",
    [
        "202",  # too short for a year
        "20261",  # odd digit count
        "2026112608153",
        "20261326",  # month 13
        "20260229",  # not a leap year
        "20261126250000",  # hour 25
        "20261126086000",  # minute 60
        "20261126.5",  # a fraction needs seconds
        "20261126081530.",  # a dot without digits
        "20261126081530+02",  # HL7 offsets have four digits
        "20261126081530+0260",  # 60 minutes
        "20261126081530+1500",  # beyond +14:00
        "2026-11-26T08:15:00",  # ISO is not HL7
        "2026112608153O",  # letter O for zero
        "",
    ],
)
def test_invalid_hl7_timestamps_are_null(text):
    assert cast_with_companions([text], "timestamp", "hl7").row(0) == (None, None, None)


@pytest.mark.parametrize(
    ("text", "instant", "offset"),
    [
        ("2026-11-26T08:15:00", utc(2026, 11, 26, 8, 15), None),
        ("2026-11-26 08:15:00", utc(2026, 11, 26, 8, 15), None),
        ("2026-11-26T08:15", utc(2026, 11, 26, 8, 15), None),
        ("2026-11-26", utc(2026, 11, 26), None),
        ("2026-11-26T08:15:00.25", utc(2026, 11, 26, 8, 15, 0, 250_000), None),
        ("2026-11-26T08:15:00,25", utc(2026, 11, 26, 8, 15, 0, 250_000), None),
        ("2026-11-26T08:15:00Z", utc(2026, 11, 26, 8, 15), "+0000"),
        ("2026-11-26T08:15:00+02:00", utc(2026, 11, 26, 6, 15), "+0200"),
        ("2026-11-26T08:15:00+0200", utc(2026, 11, 26, 6, 15), "+0200"),
        ("2026-11-26T08:15:00+02", utc(2026, 11, 26, 6, 15), "+0200"),
        ("2026-11-26 08:15:00.123456-05:00", utc(2026, 11, 26, 13, 15, 0, 123_456), "-0500"),
        ("2026-11-26T23:30:00-05:00", utc(2026, 11, 27, 4, 30), "-0500"),
    ],
)
def test_iso_timestamp_variants(text, instant, offset):
    for format_ in (None, "iso"):
        frame = cast_with_companions([text], "timestamp", format_)
        assert frame.schema == {"value": TIMESTAMP, "_offset": pl.String}
        assert frame.row(0) == (instant, offset)


@pytest.mark.parametrize(
    "text",
    [
        "26/11/2026 08:15",
        "2026-11-26T08:15:00+25:00",
        "2026-11-26T8:15:00",
        "2026-02-30",
        "20261126081530",
        "x",
    ],
)
def test_invalid_iso_timestamps_are_null(text):
    assert cast_with_companions([text], "timestamp", "iso").row(0) == (None, None)


def test_local_times_use_the_declared_zone_and_offsets_win():
    values = [
        "2026-11-26T08:15:00",  # CET, +01:00
        "2026-07-01T08:15:00",  # CEST, +02:00
        "2026-07-01T08:15:00-05:00",  # the sender's offset wins over the zone
        "2026-10-25T02:30:00",  # autumn overlap: the earlier instant (still CEST)
        "2026-03-29T02:30:00",  # spring gap: does not exist in Berlin
    ]
    frame = cast_with_companions(values, "timestamp", "iso", "Europe/Berlin")
    assert frame.rows() == [
        (utc(2026, 11, 26, 7, 15), None),
        (utc(2026, 7, 1, 6, 15), None),
        (utc(2026, 7, 1, 13, 15), "-0500"),
        (utc(2026, 10, 25, 0, 30), None),
        (None, None),
    ]
    hl7 = cast_with_companions(["202607010815", "202607010815+0000"], "timestamp", "hl7", "America/New_York")
    assert hl7.rows() == [
        (utc(2026, 7, 1, 12, 15), None, "minute"),
        (utc(2026, 7, 1, 8, 15), "+0000", "minute"),
    ]


def test_custom_strptime_timestamps():
    frame = cast_with_companions(["26/11/2026 08:15", "26/11/2026", None], "timestamp", "%d/%m/%Y %H:%M")
    assert frame.rows() == [(utc(2026, 11, 26, 8, 15), None), (None, None), (None, None)]
    zoned = cast_with_companions(["26/11/2026 08:15"], "timestamp", "%d/%m/%Y %H:%M", "America/Chicago")
    assert zoned.row(0) == (utc(2026, 11, 26, 14, 15), None)
    with_offset = cast(pl.Series(["2026-11-26 08:15 +0200"]), "timestamp", "%Y-%m-%d %H:%M %z")
    assert with_offset.dtype == TIMESTAMP
    assert with_offset.to_list() == [utc(2026, 11, 26, 6, 15)]


@pytest.mark.parametrize(
    ("text", "day", "precision"),
    [
        ("1980", date(1980, 1, 1), "year"),
        ("198005", date(1980, 5, 1), "month"),
        ("19800512", date(1980, 5, 12), "day"),
        # A birth date with a time and offset keeps the calendar date as written.
        ("198005122330-0500", date(1980, 5, 12), "minute"),
        ("19800512000000+1400", date(1980, 5, 12), "second"),
        ("19801312", None, None),
        ("1980-05-12", None, None),
    ],
)
def test_hl7_dates(text, day, precision):
    frame = cast_with_companions([text], "date", "hl7")
    assert frame.schema == {"value": pl.Date, "_precision": pl.String}
    assert frame.row(0) == (day, precision)


def test_iso_and_custom_dates():
    assert cast(pl.Series(["2026-11-26", " 2026-11-26 ", "2026-13-01", "26.11.2026"]), "date").to_list() == [
        date(2026, 11, 26),
        date(2026, 11, 26),
        None,
        None,
    ]
    assert cast(pl.Series(["26.11.2026", "2026-11-26"]), "date", "%d.%m.%Y").to_list() == [
        date(2026, 11, 26),
        None,
    ]


def test_numbers_and_booleans():
    ints = pl.Series(["42", " -7 ", "+3", "1.0", "2147483648", "x", None, ""])
    assert cast(ints, "int").to_list() == [42, -7, 3, None, None, None, None, None]
    assert cast(ints, "long").to_list() == [42, -7, 3, None, 2147483648, None, None, None]
    assert cast(ints, "long").dtype == pl.Int64 and cast(ints, "int").dtype == pl.Int32
    doubles = pl.Series(["1.5", "-2e3", " .5 ", "inf", "NaN", "1,5", "abc"])
    assert cast(doubles, "double").to_list() == [1.5, -2000.0, 0.5, None, None, None, None]
    flags = pl.Series(["true", "FALSE", "Y", "n", "1", "0", " yes ", "No", "maybe", "2"])
    assert cast(flags, "boolean").to_list() == [
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        False,
        None,
        None,
    ]


def test_decimals_never_round_silently():
    values = pl.Series(
        ["1.25", "-0.5", "+12345678.12", "00001.5", "1.", ".5", "1.256", "123456789", "1e2", ".", ""]
    )
    result = cast(values, "decimal", "10,2")
    assert result.dtype == pl.Decimal(10, 2)
    assert result.to_list() == [
        Decimal("1.25"),
        Decimal("-0.50"),
        Decimal("12345678.12"),
        Decimal("1.50"),
        Decimal("1.00"),
        Decimal("0.50"),
        None,  # three fraction digits do not fit scale 2
        None,  # nine integer digits do not fit precision 10 - scale 2
        None,
        None,
        None,
    ]
    assert cast(pl.Series(["7", "7.0", "7."]), "decimal", "5,0").to_list() == [Decimal(7), None, Decimal(7)]
    assert polars_type("decimal") == pl.Decimal(38, 9)


def test_strings_are_kept_as_received():
    assert cast(pl.Series([" a ", "", None]), "string").to_list() == [" a ", "", None]


@pytest.mark.parametrize(
    ("type_", "format_", "message"),
    [
        ("string", "hl7", "type 'string' takes no format"),
        ("int", "%d", "type 'int' takes no format"),
        ("timestamp", "yyyy-MM-dd", "a timestamp format is 'hl7', 'iso' or a strptime pattern"),
        ("date", "%Q", "the date format '%Q' cannot read a value it writes"),
        ("timestamp", "%Y-%m-%d %H", "the timestamp format '%Y-%m-%d %H' cannot read a value it writes"),
        ("decimal", "10", "a decimal format is 'precision,scale'"),
        ("decimal", "40,2", "a decimal needs 1 <= precision <= 38"),
        ("decimal", "2,3", "a decimal needs 1 <= precision <= 38 and scale <= precision"),
    ],
)
def test_check_format_rejects(type_, format_, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("+", r"\+")):
        check_format(type_, format_)


@pytest.mark.parametrize(
    ("type_", "format_"),
    [
        ("timestamp", "hl7"),
        ("date", "iso"),
        ("timestamp", "%d/%m/%Y %H:%M:%S"),
        ("decimal", "18,4"),
        ("int", None),
    ],
)
def test_check_format_accepts(type_, format_):
    check_format(type_, format_)
