"""Silver typing and cleaning declared in metadata: shared Polars expressions, chosen by name in YAML."""

from medlake_assets.silver.casts import Cast, cast, cast_column, cast_frame, check_format, polars_type
from medlake_assets.silver.cleaning import DEFAULT_NULL_TOKENS, SEX_CODES, TRANSFORMS, Transform
from medlake_assets.silver.typed import FAILURE_SCHEMA, TypedBatch, apply_types, typed_schema

__all__ = [
    "DEFAULT_NULL_TOKENS",
    "FAILURE_SCHEMA",
    "SEX_CODES",
    "TRANSFORMS",
    "Cast",
    "Transform",
    "TypedBatch",
    "apply_types",
    "cast",
    "cast_column",
    "cast_frame",
    "check_format",
    "polars_type",
    "typed_schema",
]
