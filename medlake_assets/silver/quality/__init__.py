"""Silver's quality gates: pandera rules from metadata, quarantine routing, held rows, freshness, status."""

from medlake_assets.silver.quality.gate import (
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
from medlake_assets.silver.quality.schemas import (
    LINEAGE,
    Rule,
    SchemaBuildError,
    build_schema,
    rules,
    unique_key,
)

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
