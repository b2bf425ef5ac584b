"""Which loaded bronze batches each downstream table (e.g. silver.bed_census) has taken in: what makes
silver incremental, and what it still has to do."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import select

from medlake_assets.lake.ledger.base import _MAX_ROWS_PER_INSERT, LedgerBase, _chunks, _now
from medlake_assets.lake.ledger.tables import LOADED, files, processed


class ProcessedLedger(LedgerBase):
    """The `medlake_processed` table, read against the loaded files."""

    def processed_batches(self, consumer: str, landing_day: date) -> set[str]:
        """Batch ids a downstream table has already taken in for a landing day."""
        query = select(processed.c.batch_id).where(
            processed.c.consumer == consumer, processed.c.landing_day == landing_day
        )
        with self._engine.connect() as connection:
            return set(connection.scalars(query))

    def mark_processed(self, consumer: str, source: str, landing_day: date, batch_ids: Sequence[str]) -> None:
        """Record batches as taken in by `consumer` (insert if absent: a repeat changes nothing)."""
        rows = [
            {
                "consumer": consumer,
                "batch_id": batch,
                "source": source,
                "landing_day": landing_day,
                "processed_at": _now(),
            }
            for batch in sorted(batch_ids)
        ]
        if not rows:
            return
        with self._writer.begin() as connection:
            for chunk in _chunks(rows, _MAX_ROWS_PER_INSERT):
                statement = self._insert(processed).values(list(chunk))
                connection.execute(statement.on_conflict_do_nothing(index_elements=["consumer", "batch_id"]))

    def pending_days(self, consumer: str, source: str) -> list[date]:
        """Landing days with bronze batches the consumer has not taken in yet."""
        return sorted(self.pending_batches(consumer, source))

    def pending_batches(
        self, consumer: str, source: str, loaded_before: datetime | None = None
    ) -> dict[date, set[str]]:
        """Per landing day, the loaded bronze batches the consumer has not taken in yet (only those
        loaded before `loaded_before`, if given)."""
        done = select(processed.c.batch_id).where(processed.c.consumer == consumer)
        query = (
            select(files.c.landing_day, files.c.batch_id)
            .distinct()
            .where(files.c.source == source, files.c.status == LOADED, files.c.batch_id.not_in(done))
        )
        if loaded_before is not None:
            query = query.where(files.c.loaded_at < loaded_before)
        pending: dict[date, set[str]] = {}
        with self._engine.connect() as connection:
            for day, batch_id in connection.execute(query):
                pending.setdefault(day, set()).add(batch_id)
        return pending
