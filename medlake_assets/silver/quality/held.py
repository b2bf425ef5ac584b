"""Held rows: the facilities' slices of a batch that silver's quality gate held back.

A slice is one facility's rows of one bronze batch. When its error rate is over the facility's threshold
(`quality/gate.py: facility_gate`) its passing rows are not published; its failing rows go to quarantine as
always. The rows themselves stay in bronze, where they already are, so nothing is copied: this module
keeps only the decision, in the ledger table `medlake_held` (`meta.held`): counts, rule codes, the
metadata version it was taken under, and who released it when. Never a value.

A slice is `held` until one of:
- the metadata changes (`metadata_version`) and the next silver run of its day evaluates it again and it
  passes (`published`, `released_by` empty); failing again keeps it `held` under the new version;
- an operator releases it (`medlake release`): `released`, with who and when, and the next silver run of
  its day publishes its passing rows whatever the rate (`published`);
- its batch disappears (a bronze backfill gives the day's archives new batches, which silver takes in
  afresh): `superseded`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from medlake_assets.lake.ledger import Ledger, held, processed

HELD, RELEASED, PUBLISHED, SUPERSEDED = "held", "released", "published", "superseded"
WAITING = (HELD, RELEASED)
"""Statuses whose rows are not in silver yet."""


@dataclass(frozen=True)
class HeldSlice:
    """One row of `meta.held`."""

    source: str
    landing_day: date
    batch_id: str
    facility: str
    status: str
    rows: int
    rejected: int
    error_rate: float
    threshold: float
    rules: dict[str, int]
    metadata_version: str
    held_at: datetime
    released_by: str | None
    released_at: datetime | None

    @property
    def held_rows(self) -> int:
        """The slice's rows that passed every rule and wait to be published."""
        return self.rows - self.rejected


@dataclass(frozen=True)
class SliceOutcome:
    """The gate's decision on one slice in a silver run."""

    batch_id: str
    facility: str
    rows: int
    rejected: int
    error_rate: float
    threshold: float
    rules: dict[str, int]
    held: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _slice(row) -> HeldSlice:
    values = dict(row._mapping)
    values["rules"] = json.loads(values["rules"])
    for name in ("evaluated_at", "published_at"):
        values.pop(name)
    return HeldSlice(**values)


def held_slices(
    ledger: Ledger,
    source: str | None = None,
    *,
    facility: str | None = None,
    day: date | None = None,
    statuses: Collection[str] = WAITING,
) -> list[HeldSlice]:
    """Slices in `statuses` (held or released by default), oldest first."""
    conditions = [held.c.status.in_(list(statuses))]
    for column, value in (("source", source), ("facility", facility), ("landing_day", day)):
        if value is not None:
            conditions.append(held.c[column] == value)
    query = select(held).where(*conditions).order_by(held.c.held_at, held.c.batch_id, held.c.facility)
    with ledger.engine.connect() as connection:
        return [_slice(row) for row in connection.execute(query)]


def to_evaluate(ledger: Ledger, source: str, version: str, day: date | None = None) -> list[HeldSlice]:
    """Slices a silver run must take up again: released ones, and held ones decided under other metadata."""
    return [
        item
        for item in held_slices(ledger, source, day=day)
        if item.status == RELEASED or item.metadata_version != version
    ]


def record(
    ledger: Ledger,
    source: str,
    day: date,
    outcomes: Iterable[SliceOutcome],
    version: str,
    consumer: str,
) -> list[str]:
    """Write a silver run's decisions, in one transaction: held slices are inserted or updated (keeping
    when they were first held); slices that were waiting and are now published are marked so.

    A batch whose held slice is published now has new rows in `consumer` (`silver.<source>`): every other
    consumer that already took the batch in (e.g. `silver.encounters`) is made to take it again. Returns
    the batches that were published from waiting slices.
    """
    now = _now()
    outcomes = list(outcomes)
    insert = postgresql.insert if ledger.engine.dialect.name == "postgresql" else sqlite.insert
    reopened: set[str] = set()
    with ledger.writer.begin() as connection:
        for outcome in outcomes:
            key = and_(
                held.c.source == source,
                held.c.batch_id == outcome.batch_id,
                held.c.facility == outcome.facility,
            )
            decision = {
                "rows": outcome.rows,
                "rejected": outcome.rejected,
                "error_rate": outcome.error_rate,
                "threshold": outcome.threshold,
                "rules": json.dumps(dict(sorted(outcome.rules.items()))),
                "metadata_version": version,
                "evaluated_at": now,
            }
            if outcome.held:
                statement = insert(held).values(
                    source=source,
                    landing_day=day,
                    batch_id=outcome.batch_id,
                    facility=outcome.facility,
                    status=HELD,
                    held_at=now,
                    **decision,
                )
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["source", "batch_id", "facility"],
                        set_={"status": HELD, **decision},
                    )
                )
                continue
            published = connection.execute(
                update(held)
                .where(key, held.c.status.in_(WAITING))
                .values(status=PUBLISHED, published_at=now, **decision)
            ).rowcount
            if published:
                reopened.add(outcome.batch_id)
        if reopened:
            connection.execute(
                processed.delete().where(
                    processed.c.batch_id.in_(sorted(reopened)), processed.c.consumer != consumer
                )
            )
    return sorted(reopened)


def release(ledger: Ledger, source: str, facility: str, by: str, day: date | None = None) -> list[HeldSlice]:
    """Mark a facility's held slices (of one landing day, or all) released by `by`; returns every slice of
    the facility now waiting for its silver run as released (earlier releases included)."""
    conditions = [held.c.source == source, held.c.facility == facility]
    if day is not None:
        conditions.append(held.c.landing_day == day)
    with ledger.writer.begin() as connection:
        connection.execute(
            update(held)
            .where(*conditions, held.c.status == HELD)
            .values(status=RELEASED, released_by=by, released_at=_now())
        )
    return held_slices(ledger, source, facility=facility, day=day, statuses=(RELEASED,))


def supersede(ledger: Ledger, source: str, day: date, batches: Sequence[str]) -> int:
    """Mark the day's waiting slices whose batch is not among `batches` (the day's loaded batches)
    superseded: a bronze backfill re-batched their archives. Returns how many."""
    conditions = [held.c.source == source, held.c.landing_day == day, held.c.status.in_(WAITING)]
    if batches:
        conditions.append(held.c.batch_id.not_in(list(batches)))
    with ledger.writer.begin() as connection:
        return connection.execute(
            update(held).where(*conditions).values(status=SUPERSEDED, evaluated_at=_now())
        ).rowcount


__all__ = [
    "HELD",
    "PUBLISHED",
    "RELEASED",
    "SUPERSEDED",
    "WAITING",
    "HeldSlice",
    "SliceOutcome",
    "held_slices",
    "record",
    "release",
    "supersede",
    "to_evaluate",
]
