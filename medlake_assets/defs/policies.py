"""Execution policies shared by the asset definitions, so each is written once."""

from __future__ import annotations


def table_pool(table: str) -> str:
    """The Dagster pool of everything that writes one Iceberg table (`namespace.name`): its loads and its
    maintenance take turns, since two writers of a table would fight over its metadata commits."""
    return "iceberg_" + table.replace(".", "_")
