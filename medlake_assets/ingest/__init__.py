"""Landing to bronze: routing, unpacking, parsing and bronze writes, with no Dagster import."""
