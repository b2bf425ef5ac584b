"""Cleaning transforms: each factory's exact output, the null token list, and the sex normalization table."""

from __future__ import annotations

import polars as pl
import pytest

from medlake_assets.silver.cleaning import (
    DEFAULT_NULL_TOKENS,
    TRANSFORMS,
    TransformOptions,
    collapse_whitespace,
    digits_only,
    lower,
    normalize_sex,
    null_tokens,
    trim,
    upper,
)


def run(transform, values: list[str | None], *args) -> list[str | None]:
    frame = pl.DataFrame({"v": values}, schema={"v": pl.String})
    return frame.select(transform(pl.col("v"), *args))["v"].to_list()


def test_trim_upper_lower_collapse():
    assert run(trim, ["  a b \t", "\n", None]) == ["a b", "", None]
    assert run(upper, ["mixed Ça", None]) == ["MIXED ÇA", None]
    assert run(lower, ["MIXED ÇA"]) == ["mixed ça"]
    assert run(collapse_whitespace, ["  Anna \t  Maria\r\nLee ", "one"]) == ["Anna Maria Lee", "one"]


def test_null_tokens_default_list():
    assert DEFAULT_NULL_TOKENS == ("", "NULL", "N/A", '""')
    values = ["", "NULL", "N/A", '""', "  N/A ", "null", "Null", "n/a", "NA", "value", None]
    # Case-sensitive: `Null` is a real family name.
    assert run(null_tokens, values) == [
        None,
        None,
        None,
        None,
        None,
        "null",
        "Null",
        "n/a",
        "NA",
        "value",
        None,
    ]


def test_null_tokens_override():
    assert run(null_tokens, ["-", "NULL", "", "x"], ["-", ""]) == [None, "NULL", None, "x"]


@pytest.mark.parametrize(
    ("received", "code"),
    [
        # HL7 v2 table 0001
        ("M", "M"),
        ("F", "F"),
        ("U", "U"),
        ("O", "O"),
        ("A", "O"),
        ("N", "U"),
        # C-CDA AdministrativeGender
        ("UN", "O"),
        # CSV words, any case and padding
        ("male", "M"),
        ("Female", "F"),
        (" UNKNOWN ", "U"),
        ("other", "O"),
        ("unk", "U"),
        ("m", "M"),
        # not a known code: null, reported as a failure by apply_types
        ("X", None),
        ("mal", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_sex_table(received, code):
    assert run(normalize_sex, [received]) == [code]


def test_digits_only():
    assert run(digits_only, ["(555) 010-2030", "ext. 42", "no digits", "", None]) == [
        "5550102030",
        "42",
        None,
        None,
        None,
    ]


def test_registry_builds_the_same_expressions():
    options = TransformOptions(null_tokens=("-",))
    values = [" -", "x "]
    frame = pl.DataFrame({"v": values})
    assert sorted(TRANSFORMS) == [
        "collapse_whitespace",
        "digits_only",
        "lower",
        "normalize_sex",
        "null_tokens",
        "trim",
        "upper",
    ]
    assert frame.select(TRANSFORMS["null_tokens"].build(pl.col("v"), options))["v"].to_list() == [None, "x "]
    assert frame.select(TRANSFORMS["trim"].build(pl.col("v"), options))["v"].to_list() == ["-", "x"]
    assert [name for name, transform in TRANSFORMS.items() if transform.nulls_on_purpose] == ["null_tokens"]
