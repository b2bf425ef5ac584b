"""Silver quality gates: pandera schemas from metadata, row routing to quarantine, the per-facility gate,
held rows, freshness and the operator's status."""

from medlake_assets.quality.gate import (
    COUNTS_SCHEMA,
    GateResult,
    GateSchemaError,
    evaluate,
    facility_gate,
    failures,
    freshness_sla,
    gate_decision,
    metadata_version,
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
    "facility_gate",
    "failures",
    "freshness_sla",
    "gate_decision",
    "metadata_version",
    "rules",
    "summary",
    "unique_key",
]
