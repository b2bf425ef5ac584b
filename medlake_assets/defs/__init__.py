"""The thin Dagster layer: assets, checks, sensors and jobs per layer (bronze, silver, gold, maintenance)."""
