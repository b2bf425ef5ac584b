"""Read paths over the lake: SQL through DuckDB (with time travel), the Python read API, table listings."""
