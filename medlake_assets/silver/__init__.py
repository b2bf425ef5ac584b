"""Silver tables derived from other silver tables: pure Polars functions, no Dagster."""
