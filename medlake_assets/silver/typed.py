"""Apply a source's declared columns to a bronze frame: cleaning transforms, then casts, plus failures.

A value that is not null but fails a transform or its cast becomes null in the typed frame AND gets one
row in `failures` (lineage keys, column, rule `transform.<name>` or `cast.<type>`, reason without the
value), so the quality gate can quarantine the row rather than keep a silently emptied field.

Typed frame columns, in order: each declared column with its companions right after it
(`<name>_offset` for every timestamp: the sender's offset as `+HHMM`, null when none was given;
`<name>_precision` for `hl7` dates and timestamps: year, month, day, hour, minute, second or fraction),
then every other column of the input (lineage) unchanged.

A column whose plan is costly (a parse by pattern, a regex) and whose values repeat is typed once per
distinct value and joined back by the raw value (`_typed_by_value`): the same values and failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from medlake_assets.silver.casts import PARSED_TYPES, cast_column, companion_types, polars_type
from medlake_assets.silver.cleaning import DEFAULT_NULL_TOKENS, TRANSFORMS, TransformOptions
from medlake_assets.spec.models import ColumnSpec, SourceSpec

LINEAGE_KEYS: tuple[str, ...] = ("_archive", "_member", "_record")
FAILURE_SCHEMA: dict[str, pl.DataType] = {
    "_row": pl.UInt32(),
    "_archive": pl.String(),
    "_member": pl.String(),
    "_record": pl.Int64(),
    "column": pl.String(),
    "rule": pl.String(),
    "reason": pl.String(),
}
_ROW = "__row"
_FAIL = "__fail__"
_RAW = "__raw"
_VALUE = "__value__"
MAX_DISTINCT_SHARE = 0.5
"""A costly column is typed once per distinct value, not per row, when at most this share of its values
are distinct (estimated: an exact count of a column whose values hardly repeat, a bed's update time, cost
a fifth of its parse for nothing)."""


@dataclass(frozen=True)
class TypedBatch:
    """`frame`: typed rows, same order and count as the input; `failures`: one row per failed value.

    `failures._row` is the 0-based row position in the input (and in `frame`).
    """

    frame: pl.DataFrame
    failures: pl.DataFrame


def typed_schema(spec: SourceSpec) -> dict[str, pl.DataType]:
    """The declared columns' typed schema with companions (no lineage), e.g. for the silver table."""
    names = set(spec.column_names())
    schema: dict[str, pl.DataType] = {}
    for column in spec.columns:
        schema[column.name] = polars_type(column.type, column.format)
        for suffix, dtype in companion_types(column.type, column.format).items():
            if column.name + suffix in names:
                raise ValueError(
                    f"source {spec.name}: column {column.name + suffix!r} clashes with the companion column "
                    f"of {column.name!r}"
                )
            schema[column.name + suffix] = dtype
    return schema


def null_tokens_for(column: ColumnSpec, spec: SourceSpec) -> tuple[str, ...]:
    """The column's tokens, else the ones the source's format declares explicitly, else the default list."""
    if column.null_tokens is not None:
        return tuple(column.null_tokens)
    fmt = spec.format
    if "null_tokens" in fmt.model_fields_set:
        return tuple(fmt.null_tokens)
    return DEFAULT_NULL_TOKENS


@dataclass(frozen=True)
class _ColumnPlan:
    steps: list[dict[str, pl.Expr]]  # temporary columns, one `with_columns` per step
    outputs: list[pl.Expr]  # the typed value and its companions
    failed: pl.Expr | None  # the rule of the stage that lost a non-null value, else null
    reasons: dict[str, str]  # failure reason by rule
    costly: bool = False  # a parse or a regex per value (`_typed_by_value`)


def _plan_column(column: ColumnSpec, spec: SourceSpec) -> _ColumnPlan:
    options = TransformOptions(null_tokens=null_tokens_for(column, spec))
    scratch = f"__{column.name}"
    steps: list[dict[str, pl.Expr]] = []
    checks: list[tuple[pl.Expr, str]] = []
    reasons: dict[str, str] = {}
    text = pl.col(column.name).cast(pl.String)
    # Each stage's output is a temporary column, so the failure checks reuse it instead of recomputing.
    for index, name in enumerate(column.transforms):
        transform = TRANSFORMS[name]
        cleaned = f"{scratch}_t{index}"
        steps.append({cleaned: transform.build(text, options)})
        if not transform.nulls_on_purpose:
            rule = f"transform.{name}"
            checks.append((text.is_not_null() & pl.col(cleaned).is_null(), rule))
            reasons[rule] = transform.reason
        text = pl.col(cleaned)
    cast = cast_column(text, column.type, column.format, column.timezone, scratch=scratch)
    steps += cast.steps
    value = pl.col(column.name)
    if column.type != "string":
        value = pl.col(f"{scratch}_typed")
        steps.append({f"{scratch}_typed": cast.value})
        rule = f"cast.{column.type}"
        checks.append((text.is_not_null() & value.is_null(), rule))
        reasons[rule] = cast.reason
    elif column.transforms:
        value = text
    outputs = [value.alias(column.name)]
    outputs += [expr.alias(column.name + suffix) for suffix, expr in cast.companions.items()]
    costly = column.type in PARSED_TYPES or any(TRANSFORMS[name].costly for name in column.transforms)
    if not checks:
        return _ColumnPlan(steps, outputs, None, reasons, costly)
    # A failed value is null afterwards, so at most one check holds: the first stage that lost it.
    failed = pl.when(checks[0][0]).then(pl.lit(checks[0][1]))
    for condition, rule in checks[1:]:
        failed = failed.when(condition).then(pl.lit(rule))
    failed = failed.otherwise(pl.lit(None, dtype=pl.String)).alias(_FAIL + column.name)
    return _ColumnPlan(steps, outputs, failed, reasons, costly)


def apply_types(frame: pl.DataFrame, spec: SourceSpec) -> TypedBatch:
    """Clean and cast every declared column of a bronze-shaped frame (strings) as the source declares."""
    schema = typed_schema(spec)
    missing = [name for name in spec.column_names() if name not in frame.columns]
    if missing:
        raise ValueError(f"source {spec.name}: the frame lacks declared columns {missing}")
    plans = [_plan_column(column, spec) for column in spec.columns]
    # One chunk per column: Polars 1.44 can panic evaluating these expressions over multi-chunk frames.
    frame = frame.rechunk()
    lazy = frame.lazy().with_row_index(_ROW)
    in_place: dict[str, _ColumnPlan] = {}
    outputs: list[pl.Expr] = []
    for column, plan in zip(spec.columns, plans, strict=True):
        by_value = _typed_by_value(frame, column.name, plan)
        if by_value is None:
            in_place[column.name] = plan
            outputs += plan.outputs
            continue
        lazy = lazy.join(
            by_value.lazy(),
            left_on=column.name,
            right_on=_RAW,
            how="left",
            nulls_equal=True,
            maintain_order="left",
        )
        outputs += [
            pl.col(_VALUE + expr.meta.output_name()).alias(expr.meta.output_name()) for expr in plan.outputs
        ]
    # Step k of every column typed in place in one `with_columns`, so Polars runs the columns in parallel.
    for depth in range(max((len(plan.steps) for plan in in_place.values()), default=0)):
        lazy = lazy.with_columns(
            **{
                n: e
                for plan in in_place.values()
                if depth < len(plan.steps)
                for n, e in plan.steps[depth].items()
            }
        )
    others = [name for name in frame.columns if name not in schema]
    fails = [
        plan.failed if column.name in in_place else pl.col(_FAIL + column.name)
        for column, plan in zip(spec.columns, plans, strict=True)
        if plan.failed is not None
    ]
    result = lazy.select(_ROW, *outputs, *fails, *others).collect()
    reasons = [
        {"column": column.name, "rule": rule, "reason": why}
        for column, plan in zip(spec.columns, plans, strict=True)
        for rule, why in plan.reasons.items()
    ]
    return TypedBatch(result.select(*schema, *others), _failures(result, reasons))


def _typed_by_value(frame: pl.DataFrame, name: str, plan: _ColumnPlan) -> pl.DataFrame | None:
    """The column's typed outputs and failure for each of its distinct raw values (in `_RAW`), or None when
    its plan is cheap or its values repeat too little for a join to cost less. Test names, units and the
    shared time of an order's results repeat thousands of times in a batch: cleaning `test_name` by regex
    once per row was half of typing a lab batch."""
    if not plan.costly:
        return None
    raw = frame.get_column(name)
    if raw.approx_n_unique() > frame.height * MAX_DISTINCT_SHARE:
        return None
    distinct = raw.unique().rechunk()  # one chunk, as `apply_types` gives its frame
    lazy = distinct.to_frame().lazy()
    for step in plan.steps:
        lazy = lazy.with_columns(**step)
    failed = [] if plan.failed is None else [plan.failed]
    values = [expr.alias(_VALUE + expr.meta.output_name()) for expr in plan.outputs]
    return lazy.select(pl.col(name).alias(_RAW), *values, *failed).collect()


def _failures(result: pl.DataFrame, reasons: list[dict[str, str]]) -> pl.DataFrame:
    fail_columns = [name for name in result.columns if name.startswith(_FAIL)]
    keys = [_ROW, *[name for name in LINEAGE_KEYS if name in result.columns]]
    if not fail_columns:
        return pl.DataFrame(schema=FAILURE_SCHEMA)
    flagged = result.filter(pl.any_horizontal(pl.col(fail_columns).is_not_null())).select(
        *keys, *fail_columns
    )
    failures = (
        flagged.unpivot(index=keys, on=fail_columns, variable_name="column", value_name="rule")
        .drop_nulls("rule")
        .with_columns(pl.col("column").str.strip_prefix(_FAIL))
        .join(
            pl.DataFrame(reasons, schema={"column": pl.String, "rule": pl.String, "reason": pl.String}),
            on=["column", "rule"],
            how="left",
        )
        .rename({_ROW: "_row"})
        .sort("_row", maintain_order=True)
    )
    return failures.select(
        pl.col(name).cast(dtype) if name in failures.columns else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in FAILURE_SCHEMA.items()
    )
