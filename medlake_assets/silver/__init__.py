"""Bronze to silver: typing, cleaning, quality gates, silver tables, merges, derived tables; no Dagster."""
