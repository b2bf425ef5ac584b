"""Silver quality gates: pandera schemas from metadata, row routing to quarantine, counts, freshness."""

from medlake_assets.quality.gate import (
    COUNTS_SCHEMA,
    GateResult,
    GateSchemaError,
    evaluate,
    failures,
    freshness,
    freshness_sla,
    gate_decision,
    summary,
)
from medlake_assets.quality.schemas import LINEAGE, Rule, SchemaBuildError, build_schema, rules, unique_key

__all__ = [
    "COUNTS_SCHEMA",
    "LINEAGE",
    "GateResult",
    "GateSchemaError",
    "Rule",
    "SchemaBuildError",
    "build_schema",
    "evaluate",
    "failures",
    "freshness",
    "freshness_sla",
    "gate_decision",
    "rules",
    "summary",
    "unique_key",
]
