"""The ledger: the transactional record behind exactly-once loads, in the Iceberg SQL catalog's database
(SQLite by default, PostgreSQL in production). Three parts on one database:

- `files`: one row per landed object (`meta.files`, unique on store, key and etag); sensors register objects
  and claim the pending ones into deterministic batches, runs mark each file loaded or quarantined
  (design.md section 4);
- `processed`: which bronze batches each downstream table has taken in;
- `quality`: rows rejected or warned per rule and facility.
"""

from __future__ import annotations

from medlake_assets.lake.ledger.base import SQLITE_BUSY_TIMEOUT_MS
from medlake_assets.lake.ledger.files import (
    Batch,
    FileResult,
    FilesLedger,
    LandedFile,
    LedgerConflict,
    LedgerFile,
    batch_id_for,
    cut_batches,
)
from medlake_assets.lake.ledger.processed import ProcessedLedger
from medlake_assets.lake.ledger.quality import QualityLedger
from medlake_assets.lake.ledger.tables import (
    LOADED,
    PENDING,
    QUARANTINED,
    STATUSES,
    TABLE_NAME,
    files,
    held,
    processed,
    quality,
    stamps,
)

__all__ = [
    "LOADED",
    "PENDING",
    "QUARANTINED",
    "SQLITE_BUSY_TIMEOUT_MS",
    "STATUSES",
    "TABLE_NAME",
    "Batch",
    "FileResult",
    "LandedFile",
    "Ledger",
    "LedgerConflict",
    "LedgerFile",
    "batch_id_for",
    "cut_batches",
    "files",
    "held",
    "processed",
    "quality",
    "stamps",
]


class Ledger(FilesLedger, ProcessedLedger, QualityLedger):
    """The ledger's tables on a SQLite or PostgreSQL database, created if absent."""
