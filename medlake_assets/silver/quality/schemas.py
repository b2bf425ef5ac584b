"""Pandera schemas generated from a source's metadata: the single source of truth for silver row rules.

`build_schema(spec)` declares every column with its silver type and nullability, the lineage columns, and
one pandera check per row rule in `checks:` (freshness is a table rule: see `gate.freshness`). Each check
carries a stable rule code as its pandera `error` string, so a failure case names its rule:

- `check.not_null:<column>`: a null in a column declared `nullable: false` or named by an `error` not_null
  rule (pandera's nullability); a `warn` not_null rule on a nullable column is a check of its own, on a
  required column it adds nothing;
- `check.range:<column>`: below `min` or above `max` (inclusive), numeric columns only;
- `check.allowed:<column>`: not one of `values` (cast to the column's type);
- `check.regex:<column>`: does not match `pattern` at the start (pandera `str_matches`, Rust regex syntax;
  anchor with `$` for a full match), string columns only;
- `check.unique:<a>,<b>`: another row of the batch has the same key but different content (see below).

A second rule with the same code (e.g. a `warn` range inside an `error` range) gets `#2`, `#3`, ...

Uniqueness holds within one batch over `columns` (or `column`); without them over the write key: the
primary key plus `sequence_by` for `upsert`/`scd2` (two versions of a key are normal there, two different
rows for the same version are not), the primary key for `append`. Exact duplicates (equal in every
declared column, lineage aside) are the same record received twice and are NOT a violation: an upsert or
scd2 merge keeps one, so the event is idempotent (an `append` write keeps both; the gate never chooses a
row to drop). When rows conflict, every row of the conflicting group fails, because nothing says which one
is right. In a key, nulls compare equal.

A null passes every check but not_null (pandera's `ignore_na`): emptiness is the not_null rule's business.

The rule table (code -> severity, reason, columns) rides in `schema.metadata[RULES]` so the gate reads
everything from the schema. Reasons name the column and the rule, never a value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

import pandera.polars as pa
import polars as pl

from medlake_assets.errors import MedlakeError
from medlake_assets.silver.casts import TIMESTAMP, polars_type
from medlake_assets.spec.models import CheckSpec, SourceSpec

LINEAGE: Final[dict[str, pl.DataType]] = {
    "_archive": pl.String(),
    "_member": pl.String(),
    "_record": pl.Int64(),
    "_facility": pl.String(),
    "_landing_day": pl.Date(),
    "_ingested_at": TIMESTAMP,
    "_batch": pl.String(),
}
RULES: Final = "medlake_rules"
NUMERIC: Final = frozenset({"int", "long", "double", "decimal"})
_INDEX: Final = "__gate_row"
_REQUIRED: Final = "{} is empty but the column is required (not null)"
Severity = Literal["error", "warn"]


@dataclass(frozen=True)
class Rule:
    """One row rule as the gate reports it; `order` is its position in the metadata (not_null first)."""

    code: str
    severity: Severity
    reason: str
    columns: tuple[str, ...]
    order: int


class SchemaBuildError(MedlakeError, ValueError):
    """A check in the metadata cannot apply to its column (names the source, the check and the column)."""


def not_null_code(column: str) -> str:
    return f"check.not_null:{column}"


def rules(schema: pa.DataFrameSchema) -> dict[str, Rule]:
    """The rule table of a schema made by `build_schema`, by rule code."""
    return schema.metadata[RULES]


def unique_key(spec: SourceSpec, check: CheckSpec) -> list[str]:
    """The columns a `unique` rule holds over (see the module docstring)."""
    if check.columns or check.column:
        return list(check.columns) or [check.column]  # type: ignore[list-item]
    key = list(spec.write.primary_key)
    if spec.write.mode != "append":
        key += [name for name in spec.write.sequence_by if name not in key]
    return key


def build_schema(spec: SourceSpec) -> pa.DataFrameSchema:
    """The pandera schema of a source's silver rows: declared columns, lineage and the row rules."""
    declared_columns = {column.name: column for column in spec.columns}
    not_null = {column.name for column in spec.columns if not column.nullable}
    table: dict[str, Rule] = {}
    checks: dict[str, list[pa.Check]] = {name: [] for name in declared_columns}

    def add(code: str, severity: Severity, reason: str, columns: list[str]) -> str:
        unique_code, n = code, 1
        while unique_code in table:
            n += 1
            unique_code = f"{code}#{n}"
        table[unique_code] = Rule(unique_code, severity, reason, tuple(columns), len(table))
        return unique_code

    for name in [column.name for column in spec.columns if not column.nullable]:
        add(not_null_code(name), "error", _REQUIRED.format(name), [name])
    for check in spec.checks:
        if check.rule == "not_null" and check.severity == "error" and check.column not in not_null:
            name = check.column or ""
            not_null.add(name)
            add(not_null_code(name), "error", _REQUIRED.format(name), [name])

    for check in spec.checks:
        if check.rule == "freshness":
            continue
        if check.rule == "not_null" and (check.severity == "error" or check.column in not_null):
            continue  # the column's nullability above (a warning on a required column adds nothing)
        if check.rule == "unique":
            key = unique_key(spec, check)
            if not key:
                raise SchemaBuildError(
                    f"source {spec.name}: a unique check needs `columns` or a write primary_key"
                )
            code = add(
                f"check.unique:{','.join(key)}",
                check.severity,
                f"another row of this batch has the same {', '.join(key)} but different content",
                key,
            )
            # A column check sees the whole frame, and pandera then reports only the key's first column
            # as the failure case (a DataFrame-level check would JSON-encode each failing row in Python).
            checks[key[0]].append(pa.Check(_conflicts(key, spec.column_names()), error=code, name=code))
            continue
        column = check.column
        if column is None:
            raise SchemaBuildError(f"source {spec.name}: a {check.rule} check needs `column`")
        where = f"source {spec.name}: {check.rule} check on {column}"
        declared = declared_columns[column]
        base_code, reason = _describe(check)
        code = add(base_code, check.severity, reason, [column])
        dtype = polars_type(declared.type, declared.format)
        checks[column].append(_column_check(check, declared.type, dtype, code, where))

    columns = {
        column.name: pa.Column(
            polars_type(column.type, column.format),
            nullable=column.name not in not_null,
            checks=checks[column.name],
        )
        for column in spec.columns
    }
    clash = sorted(set(columns) & set(LINEAGE))
    if clash:
        raise SchemaBuildError(f"source {spec.name}: columns {clash} clash with lineage columns")
    columns |= {name: pa.Column(dtype, nullable=True) for name, dtype in LINEAGE.items()}
    # strict=False: companion columns of the casts (`<name>_offset`, `<name>_precision`) pass through.
    return pa.DataFrameSchema(columns, strict=False, name=spec.name, metadata={RULES: table})


def _describe(check: CheckSpec) -> tuple[str, str]:
    """(rule code, reason) of a column rule; the reason names the column and the rule, never a value."""
    column = check.column
    match check.rule:
        case "not_null":
            return not_null_code(column or ""), f"{column} is empty"
        case "range":
            low = "-inf" if check.min is None else f"{check.min:g}"
            high = "inf" if check.max is None else f"{check.max:g}"
            return f"check.range:{column}", f"{column} is outside the range [{low}, {high}]"
        case "allowed":
            return f"check.allowed:{column}", f"{column} is not one of the {len(check.values)} allowed values"
        case _:
            return f"check.regex:{column}", f"{column} does not match the pattern {check.pattern}"


def _column_check(check: CheckSpec, type_: str, dtype: pl.DataType, code: str, where: str) -> pa.Check:
    """The pandera check of one column rule, identified by its rule code."""
    named = {"error": code, "name": code}
    match check.rule:
        case "not_null":
            # Only a `warn` rule on a nullable column reaches here (an `error` one is the nullability).
            return pa.Check(
                lambda data: data.lazyframe.select(pl.col(data.key).is_not_null()), ignore_na=False, **named
            )
        case "range":
            if type_ not in NUMERIC:
                raise SchemaBuildError(f"{where}: range needs a numeric column, not {type_}")
            if check.min is not None and check.max is not None:
                return pa.Check.in_range(check.min, check.max, **named)
            if check.min is not None:
                return pa.Check.ge(check.min, **named)
            if check.max is not None:
                return pa.Check.le(check.max, **named)
            raise SchemaBuildError(f"{where}: range needs min, max or both")
        case "allowed":
            if not check.values:
                raise SchemaBuildError(f"{where}: allowed needs values")
            try:
                values = pl.Series(check.values).cast(dtype, strict=True).to_list()
            except pl.exceptions.PolarsError:
                raise SchemaBuildError(f"{where}: values are not all of type {type_}") from None
            return pa.Check.isin(values, **named)
        case "regex":
            if type_ != "string":
                raise SchemaBuildError(f"{where}: regex needs a string column, not {type_}")
            if check.pattern is None:
                raise SchemaBuildError(f"{where}: regex needs pattern")
            try:
                pl.select(pl.lit("").str.contains(check.pattern))
            except pl.exceptions.ComputeError:
                raise SchemaBuildError(f"{where}: pattern is not a valid (Rust) regular expression") from None
            return pa.Check.str_matches(check.pattern, **named)
    raise SchemaBuildError(f"{where}: unknown rule")


def conflicts(frame: pl.LazyFrame, key: list[str], content: list[str]) -> pl.LazyFrame:
    """One boolean column `conflict`, per row: another row shares its key with different content."""
    indexed = frame.with_row_index(_INDEX)
    # A 64-bit hash of the key finds the few rows that may share a key in one cheap pass; the exact
    # comparison (window over the key, distinct content) then runs on those rows only. A hash collision
    # only adds a candidate, so the result is exact.
    candidates = indexed.filter(pl.struct(key).hash().is_duplicated())
    by = [pl.col(name) for name in key]
    conflicting = candidates.filter(pl.struct(content).n_unique().over(by) > 1).select(
        _INDEX, pl.lit(True).alias("conflict")
    )
    return (
        indexed.select(_INDEX)
        .join(conflicting, on=_INDEX, how="left", maintain_order="left")
        .select(pl.col("conflict").fill_null(False))
    )


def _conflicts(key: list[str], content: list[str]) -> Callable[[object], pl.LazyFrame]:
    def check(data) -> pl.LazyFrame:  # type: ignore[no-untyped-def]
        return conflicts(data.lazyframe, key, content).select((~pl.col("conflict")).alias(data.key))

    return check
