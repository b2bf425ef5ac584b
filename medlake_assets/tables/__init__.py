"""Iceberg tables and the `meta.files` ledger: catalog, writes, merges, maintenance."""
