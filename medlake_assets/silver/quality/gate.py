"""The quality gate of one silver batch: pandera finds every failure, the gate splits and counts rows.

`evaluate` runs the schema from `build_schema` with `lazy=True`, so all failures of all rules come back at
once as pandera failure cases (rule code, row position); only their positions and rule codes are read,
never the failing values pandera also carries. Then:

- a row with at least one `error` failure goes to `rejected` (for `quarantine.<source>`) with `rule` (the
  failing error rule codes in metadata order, joined by `;`) and `reason` (their reasons, joined by `; `);
  every other row goes to `passed`, in input order. Nothing is dropped: `passed + rejected = input`;
- `warn` failures only count; a row with warnings alone passes;
- `counts` has the failures per rule and per facility (`_facility`), both severities.

A failure pandera cannot tie to a row (a column of the wrong type, a missing column, a check that crashed)
is a pipeline bug, not bad data: `evaluate` raises `GateSchemaError` and routes no row at all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl
from pandera.config import ValidationDepth, config_context

from medlake_assets.errors import MedlakeError
from medlake_assets.silver.quality.schemas import build_schema, rules
from medlake_assets.spec.models import SourceSpec

_ROW = "__row"
COUNTS_SCHEMA: dict[str, pl.DataType] = {
    "rule": pl.String(),
    "severity": pl.String(),
    "_facility": pl.String(),
    "rows": pl.UInt32(),
}


class GateSchemaError(MedlakeError, RuntimeError):
    """The batch does not fit the silver schema (names columns and checks, never values)."""


@dataclass(frozen=True)
class GateResult:
    """One batch through the gate; `errors` and `warnings` count failing rows per rule code."""

    rows: int
    passed: pl.DataFrame
    rejected: pl.DataFrame
    errors: dict[str, int]
    warnings: dict[str, int]
    counts: pl.DataFrame
    by_batch: pl.DataFrame | None = None
    """Failing rows per rule, severity, facility and `_batch` when the frame has lineage (for persisting)."""


def failures(frame: pl.DataFrame, schema: pa.DataFrameSchema) -> pl.DataFrame:
    """Every (row position, rule code) failing in `frame`, from pandera's failure cases, sorted."""
    with config_context(
        validation_enabled=True,
        validation_depth=ValidationDepth.SCHEMA_AND_DATA,
        use_narwhals_backend=False,
    ):
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as errors:
            # `failure_case` holds values and goes no further; only for a missing column is it the name.
            missing = pl.col("check") == "column_in_dataframe"
            cases = errors.failure_cases.select(
                pl.when(missing).then(pl.col("failure_case")).otherwise(pl.col("column")).alias("column"),
                "check",
                "index",
            )
        else:
            return pl.DataFrame(schema={"index": pl.UInt32(), "rule": pl.String()})
    unmapped = cases.filter(pl.col("index").is_null())
    if unmapped.height:
        problems = [
            f"{column}: {check}" + (f" (found {frame.schema[column]})" if column in frame.schema else "")
            for column, check in unmapped.select("column", "check").unique(maintain_order=True).iter_rows()
        ]
        raise GateSchemaError(
            f"source {schema.name}: the batch does not fit the silver schema, a pipeline bug and not bad "
            f"rows; nothing was routed: {'; '.join(problems)}"
        )
    rule = (
        pl.when(pl.col("check") == "not_nullable")
        .then(pl.lit("check.not_null:") + pl.col("column"))
        .otherwise(pl.col("check"))
    )
    found = cases.select(pl.col("index").cast(pl.UInt32), rule.alias("rule")).unique()
    unknown = sorted(set(found["rule"].unique()) - set(rules(schema)))
    if unknown:
        raise GateSchemaError(f"source {schema.name}: failures of checks the gate does not know: {unknown}")
    return found.sort("index", "rule")


def evaluate(
    frame: pl.DataFrame, spec: SourceSpec, *, schema: pa.DataFrameSchema | None = None
) -> GateResult:
    """Route a typed batch (declared columns + lineage) through the source's row rules."""
    schema = schema if schema is not None else build_schema(spec)
    table = rules(schema)
    rule_table = pl.DataFrame(
        {
            "rule": list(table),
            "severity": [rule.severity for rule in table.values()],
            "reason": [rule.reason for rule in table.values()],
            "order": [rule.order for rule in table.values()],
        },
        schema={"rule": pl.String(), "severity": pl.String(), "reason": pl.String(), "order": pl.Int64()},
    )
    found = failures(frame, schema).join(rule_table, on="rule", how="left")
    found = found.with_columns(frame["_facility"].gather(found["index"]).alias("_facility"))
    if "_batch" in frame.columns:
        found = found.with_columns(frame["_batch"].gather(found["index"]).alias("_batch"))

    per_row = (
        found.filter(pl.col("severity") == "error")
        .sort("index", "order")
        .group_by("index", maintain_order=True)
        .agg(pl.col("rule").str.join(";"), pl.col("reason").str.join("; "))
    )
    indexed = frame.with_row_index(_ROW)
    rejected = indexed.join(per_row, left_on=_ROW, right_on="index", how="inner", maintain_order="left")
    passed = indexed.filter(~pl.col(_ROW).is_in(per_row["index"].implode()))

    def per_rule(severity: str) -> dict[str, int]:
        counted = found.filter(pl.col("severity") == severity).group_by("rule", "order").len().sort("order")
        return dict(zip(counted["rule"], counted["len"], strict=True))

    counts = (
        found.group_by("rule", "severity", "_facility", "order")
        .agg(pl.len().cast(pl.UInt32).alias("rows"))
        .sort("order", "_facility", nulls_last=True)
        .select(list(COUNTS_SCHEMA))
        .cast(COUNTS_SCHEMA)  # type: ignore[arg-type]
    )
    return GateResult(
        rows=frame.height,
        passed=passed.drop(_ROW),
        rejected=rejected.drop(_ROW),
        errors=per_rule("error"),
        warnings=per_rule("warn"),
        counts=counts,
        by_batch=(
            found.group_by("_batch", "_facility", "rule", "severity").agg(pl.len().alias("rows"))
            if "_batch" in found.columns
            else None
        ),
    )


def gate_decision(
    result: GateResult, threshold: float, top: int = 5
) -> tuple[bool, float, list[tuple[str, int]]]:
    """(passed, error rate, top failing error rules) for the blocking check.

    The error rate is rejected rows over batch rows (0 for an empty batch); the gate fails when it is
    strictly above `threshold`. `top_rules` are (rule, failing rows), most rows first, then by code.
    """
    rate = len(result.rejected) / result.rows if result.rows else 0.0
    ranked = sorted(result.errors.items(), key=lambda item: (-item[1], item[0]))[:top]
    return rate <= threshold, rate, ranked


def facility_gate(slices: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """Which facilities' rows of each batch are held back: one decision per (`_batch`, `_facility`).

    `slices` has `_batch`, `_facility`, `rows` (the slice's rows from bronze) and `rejected` (those failing
    an error rule, casts included). A slice's error rate is rejected / max(rows, min_rows): a slice smaller
    than `min_rows` counts as that many rows, so one bad row in a tiny file does not hold its facility back
    (with the defaults, 5% of 20: one bad row passes, two do not). It is held when the rate is strictly
    above the facility's `max_error_rate` (`quality.facilities.<id>` over the source's). Adds `threshold`,
    `min_rows`, `error_rate` and `held`.
    """
    facilities = slices.get_column("_facility").unique().to_list()
    settings = pl.DataFrame(
        {
            "_facility": facilities,
            "threshold": [spec.quality.facility(f).max_error_rate for f in facilities],
            "min_rows": [spec.quality.facility(f).min_rows for f in facilities],
        },
        schema={"_facility": pl.String(), "threshold": pl.Float64(), "min_rows": pl.Int64()},
    )
    rate = pl.col("rejected") / pl.max_horizontal(pl.col("rows"), pl.col("min_rows"))
    return (
        slices.join(settings, on="_facility", how="left")
        .with_columns(rate.alias("error_rate"))
        .with_columns((pl.col("error_rate") > pl.col("threshold")).alias("held"))
    )


def metadata_version(spec: SourceSpec) -> str:
    """A digest of the metadata the gate's decisions depend on: held rows are evaluated again when it
    changes (columns, casts and transforms, rules, thresholds)."""
    relevant = spec.model_dump_json(include={"columns", "checks", "quality"})
    return hashlib.sha256(relevant.encode()).hexdigest()[:16]


def freshness_sla(spec: SourceSpec) -> tuple[int, str] | None:
    """(max lag in minutes, severity) of the source's freshness rule, or None when it declares none."""
    for check in spec.checks:
        if check.rule == "freshness" and check.max_lag_minutes is not None:
            return check.max_lag_minutes, check.severity
    return None


def summary(result: GateResult, top: int = 10) -> dict[str, object]:
    """Counts and rates for check metadata (JSON-able, no values): per rule, and the worst facilities."""
    by_facility = (
        result.counts.group_by("_facility")
        .agg(pl.col("rows").sum())
        .sort("rows", "_facility", descending=[True, False])
        .head(top)
    )
    return {
        "rows": result.rows,
        "passed": len(result.passed),
        "rejected": len(result.rejected),
        "error_rate": len(result.rejected) / result.rows if result.rows else 0.0,
        "errors": dict(result.errors),
        "warnings": dict(result.warnings),
        "top_facilities": dict(zip(by_facility["_facility"], by_facility["rows"], strict=True)),
    }


__all__ = [
    "COUNTS_SCHEMA",
    "GateResult",
    "GateSchemaError",
    "evaluate",
    "facility_gate",
    "failures",
    "freshness_sla",
    "gate_decision",
    "metadata_version",
    "summary",
]
