"""The ledger's tables in the catalog's database (SQLite or PostgreSQL): landed files, which batches each
downstream table took in, quality counts, version stamps and facilities held back by silver's gate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

PENDING = "pending"
LOADED = "loaded"
QUARANTINED = "quarantined"
STATUSES = (PENDING, LOADED, QUARANTINED)
TABLE_NAME = "medlake_files"


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps text without an offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("ledger timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()


files = Table(
    TABLE_NAME,
    metadata,
    # INTEGER PRIMARY KEY is SQLite's autoincrementing rowid; BIGINT would not be.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("store", Text, nullable=False),
    # Byte-order collation on PostgreSQL (SQLite's default) makes a key-prefix range scan exact and indexed.
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("etag", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("source", Text),
    Column("facility", Text),
    Column("landing_day", Date),
    Column("batch_id", Text, index=True),
    Column("status", Text, nullable=False),
    Column("members", Integer),
    Column("records", BigInteger),
    Column("rejected_records", BigInteger),
    Column("rule", Text),
    Column("reason", Text),
    Column("quarantine_key", Text),
    Column("first_seen_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("loaded_at", UtcDateTime),
    UniqueConstraint("store", "key", "etag", name=f"uq_{TABLE_NAME}_object"),
    CheckConstraint(f"status IN {STATUSES!r}", name=f"ck_{TABLE_NAME}_status"),
    Index(f"ix_{TABLE_NAME}_source_status_batch", "source", "status", "batch_id"),
    Index(f"ix_{TABLE_NAME}_source_day", "source", "landing_day"),
)


# Rows rejected (error) or warned per rule and facility, per batch and stage: `medlake quality`, meta.quality.
quality = Table(
    "medlake_quality",
    metadata,
    Column("source", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("facility", Text, nullable=False),
    Column("rule", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Index("ix_medlake_quality_source_day", "source", "landing_day"),
)


# Which bronze batches a downstream table (e.g. silver.bed_census) has taken in: incremental processing.
processed = Table(
    "medlake_processed",
    metadata,
    Column("consumer", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("processed_at", UtcDateTime, nullable=False),
    UniqueConstraint("consumer", "batch_id", name="uq_medlake_processed"),
    Index("ix_medlake_processed_consumer_day", "consumer", "landing_day"),
)


# Which content (`files.etag`) a listed version stamp of an object had, where the two differ (a local file's
# size-mtime-inode): a later listing with the same stamp needs no read to know what it holds.
stamps = Table(
    "medlake_stamps",
    metadata,
    Column("store", Text, nullable=False),
    Column("key", Text().with_variant(Text(collation="C"), "postgresql"), nullable=False),
    Column("stamp", Text, nullable=False),
    Column("etag", Text, nullable=False),
    UniqueConstraint("store", "key", "stamp", name="uq_medlake_stamps"),
)


# Facilities' rows of a batch that silver's gate held back (`silver/quality/held.py`), and what became of
# them.
held = Table(
    "medlake_held",
    metadata,
    Column("source", Text, nullable=False),
    Column("landing_day", Date, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("facility", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("rejected", BigInteger, nullable=False),
    Column("error_rate", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("rules", Text, nullable=False),
    Column("metadata_version", Text, nullable=False),
    Column("held_at", UtcDateTime, nullable=False),
    Column("evaluated_at", UtcDateTime, nullable=False),
    Column("released_by", Text),
    Column("released_at", UtcDateTime),
    Column("published_at", UtcDateTime),
    UniqueConstraint("source", "batch_id", "facility", name="uq_medlake_held"),
    Index("ix_medlake_held_source_status", "source", "status"),
)
