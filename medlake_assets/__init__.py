"""medlake: EMR facility feeds into Apache Iceberg, driven by metadata, orchestrated by Dagster."""


def __getattr__(name: str):
    """`medlake_assets.read(...)` without importing pyiceberg/polars until it is used."""
    if name == "read":
        from medlake_assets.serving.read import read

        return read
    raise AttributeError(f"module 'medlake_assets' has no attribute {name!r}")
