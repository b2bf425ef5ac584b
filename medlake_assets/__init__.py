"""medlake: EMR facility feeds into Apache Iceberg, driven by metadata, orchestrated by Dagster.

The package follows one archive downstream: `lake/` (settings, object store, catalog, ledger: the kernel
every layer uses), `ingest/` (landing to bronze), `silver/` (typing, quality, merges), `gold/` (reports),
`serving/` (SQL, reads, de-identification), `defs/` (the Dagster assets, sensors and policies over them),
`spec/` (the source metadata's models).

Words, one for each thing: an *archive* is a landed file (`LandedFile`; its ledger row a `LedgerFile`), a
*member* a file inside it, a *record* what a sender sent (a CSV line, an HL7 message, an XML document:
counted at ingest, rejected into quarantine), a *row* a table's row (bronze, silver, gold); a *report* is a
gold report only, and a step's outcome is a `*Result`.
"""


def __getattr__(name: str):
    """`medlake_assets.read(...)` without importing pyiceberg/polars until it is used."""
    if name == "read":
        from medlake_assets.serving.read import read

        return read
    raise AttributeError(f"module 'medlake_assets' has no attribute {name!r}")
