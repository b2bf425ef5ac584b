"""Rows rejected or warned per rule and facility, per batch and stage: `medlake quality`, `meta.quality`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from medlake_assets.lake.ledger.base import _MAX_ROWS_PER_INSERT, LedgerBase, _chunks, _now
from medlake_assets.lake.ledger.tables import quality


class QualityLedger(LedgerBase):
    """The `medlake_quality` table."""

    def record_quality(
        self,
        source: str,
        stage: str,
        landing_day: date,
        batch_ids: Sequence[str],
        counts,
        facilities: Sequence[str] | None = None,
    ) -> None:
        """Replace the counts of these batches and stage (only these facilities' counts, if given) with
        `counts` rows (batch_id, facility, rule, severity, rows): a re-run leaves one set of counts."""
        now = _now()
        rows = [
            {"source": source, "stage": stage, "landing_day": landing_day, "recorded_at": now, **row}
            for row in counts
        ]
        scope = [] if facilities is None else [quality.c.facility.in_(list(facilities))]
        with self._writer.begin() as connection:
            for chunk in _chunks(list(batch_ids), 500):
                connection.execute(
                    quality.delete().where(
                        quality.c.source == source,
                        quality.c.stage == stage,
                        quality.c.batch_id.in_(chunk),
                        *scope,
                    )
                )
            for chunk in _chunks(rows, _MAX_ROWS_PER_INSERT):
                connection.execute(quality.insert().values(list(chunk)))
