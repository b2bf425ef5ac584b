"""The thin Dagster layer: resources, the per-source builder, sensors and checks."""
