"""Cleaning transforms shared by all sources: Polars expression factories a source names in its YAML.

A column's `transforms: [trim, null_tokens, normalize_sex]` runs them in order on the string as received,
before the cast. A transform that turns a non-null value into null without meaning to (an unknown sex code,
a value without digits) is reported as a failure `transform.<name>`; only `null_tokens` nulls on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

DEFAULT_NULL_TOKENS: tuple[str, ...] = ("", "NULL", "N/A", '""')

# One value set, M/F/U/O, from HL7 v2 table 0001 (M, F, U, O, A ambiguous, N not applicable), HL7 v3 /
# C-CDA AdministrativeGender (M, F, UN undifferentiated) and the words CSV extracts use. Keys are upper case.
SEX_CODES: dict[str, str] = {
    "M": "M",
    "MALE": "M",
    "F": "F",
    "FEMALE": "F",
    "U": "U",
    "UNK": "U",
    "UNKNOWN": "U",
    "N": "U",
    "O": "O",
    "OTHER": "O",
    "A": "O",
    "UN": "O",
}


def trim(expr: pl.Expr) -> pl.Expr:
    """Strip leading and trailing whitespace."""
    return expr.str.strip_chars()


def upper(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_uppercase()


def lower(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase()


def collapse_whitespace(expr: pl.Expr) -> pl.Expr:
    """Runs of whitespace (tabs, newlines) become one space; the ends are stripped (XPath normalize-space)."""
    return expr.str.replace_all(r"\s+", " ").str.strip_chars()


def null_tokens(expr: pl.Expr, tokens: Sequence[str] = DEFAULT_NULL_TOKENS) -> pl.Expr:
    """Values equal to a token (ignoring surrounding whitespace, case-sensitive) become null.

    Case-sensitive on purpose: `Null` is a real family name.
    """
    return pl.when(~expr.str.strip_chars().is_in(list(tokens))).then(expr)


def normalize_sex(expr: pl.Expr) -> pl.Expr:
    """Map sex/gender codes and words (any case) to M, F, U or O; anything else becomes null (a failure)."""
    return expr.str.strip_chars().str.to_uppercase().replace_strict(SEX_CODES, default=None)


def digits_only(expr: pl.Expr) -> pl.Expr:
    """Keep the digits (phone numbers, ids with dashes); a value without a digit becomes null (a failure)."""
    digits = expr.str.replace_all(r"\D", "")
    return pl.when(digits.str.len_bytes() > 0).then(digits)


@dataclass(frozen=True)
class TransformOptions:
    """Per-column settings a transform may use."""

    null_tokens: tuple[str, ...] = DEFAULT_NULL_TOKENS


@dataclass(frozen=True)
class Transform:
    """A named transform: `build` makes the expression; `reason` explains a failure without the value."""

    build: Callable[[pl.Expr, TransformOptions], pl.Expr]
    reason: str
    nulls_on_purpose: bool = False
    costly: bool = False
    """A regex or a lookup per value: worth running once per distinct value (`silver/typed.py`)."""


TRANSFORMS: dict[str, Transform] = {
    "trim": Transform(lambda expr, _: trim(expr), "trim failed"),
    "upper": Transform(lambda expr, _: upper(expr), "upper failed"),
    "lower": Transform(lambda expr, _: lower(expr), "lower failed"),
    "collapse_whitespace": Transform(
        lambda expr, _: collapse_whitespace(expr), "collapse_whitespace failed", costly=True
    ),
    "null_tokens": Transform(
        lambda expr, options: null_tokens(expr, options.null_tokens), "", nulls_on_purpose=True
    ),
    "normalize_sex": Transform(
        lambda expr, _: normalize_sex(expr),
        "not a sex/gender code of HL7 v2 (M, F, U, O, A, N), C-CDA (M, F, UN) or a word (male, female, "
        "unknown, other)",
        costly=True,
    ),
    "digits_only": Transform(lambda expr, _: digits_only(expr), "holds no digit", costly=True),
}


def unknown_transforms(names: Sequence[str]) -> list[str]:
    return [name for name in names if name not in TRANSFORMS]
