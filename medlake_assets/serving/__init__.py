"""Read paths over the lake: SQL through DuckDB on the Iceberg tables."""
