"""Landing, unpacking and parsing: pure functions with no Dagster import."""
