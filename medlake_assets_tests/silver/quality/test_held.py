"""Held slices in the ledger on SQLite and PostgreSQL: held, re-evaluated under new metadata, released by
someone, published (reopening downstream consumers), superseded by a backfill."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from medlake_assets.lake.ledger import Ledger
from medlake_assets.silver.quality.held import (
    HELD,
    PUBLISHED,
    RELEASED,
    SUPERSEDED,
    SliceOutcome,
    held_slices,
    record,
    release,
    supersede,
    to_evaluate,
)
from medlake_assets_tests.postgres import scratch_schema

SOURCE, CONSUMER = "adt_events", "silver.adt_events"
DAY, OTHER_DAY = date(2026, 11, 20), date(2026, 11, 21)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    if request.param == "sqlite":
        opened = Ledger(f"sqlite:///{tmp_path / 'catalog.db'}")
        yield opened
        opened.close()
        return
    with scratch_schema("medlake_held") as url:
        opened = Ledger(url)
        yield opened
        opened.close()


def outcome(batch: str, facility: str, *, held: bool, rejected: int = 10) -> SliceOutcome:
    return SliceOutcome(
        batch, facility, 40, rejected, rejected / 40, 0.05, {"cast.timestamp": rejected}, held
    )


def states(ledger: Ledger) -> dict[tuple[str, str], str]:
    every = (HELD, RELEASED, PUBLISHED, SUPERSEDED)
    return {(s.batch_id, s.facility): s.status for s in held_slices(ledger, SOURCE, statuses=every)}


def test_a_slice_from_held_to_published(ledger: Ledger) -> None:
    record(
        ledger, SOURCE, DAY, [outcome("b1", "F1", held=True), outcome("b1", "F2", held=False)], "v1", CONSUMER
    )
    record(ledger, SOURCE, OTHER_DAY, [outcome("b2", "F1", held=True)], "v1", CONSUMER)
    assert states(ledger) == {("b1", "F1"): HELD, ("b2", "F1"): HELD}, "only held slices are recorded"
    (first, _) = held_slices(ledger, SOURCE, facility="F1")
    assert (first.held_rows, first.rules, first.released_by) == (30, {"cast.timestamp": 10}, None)

    assert to_evaluate(ledger, SOURCE, "v1") == [], "the same metadata decides the same way"
    assert [(s.batch_id, s.landing_day) for s in to_evaluate(ledger, SOURCE, "v2", DAY)] == [("b1", DAY)]

    # Still over the threshold under v2: held, under the new version, since the first time.
    record(ledger, SOURCE, DAY, [outcome("b1", "F1", held=True, rejected=12)], "v2", CONSUMER)
    (again,) = held_slices(ledger, SOURCE, day=DAY)
    assert (again.rejected, again.metadata_version, again.held_at) == (12, "v2", first.held_at)

    released = release(ledger, SOURCE, "F1", by="ops.oncall", day=DAY)
    assert [(s.batch_id, s.status, s.released_by) for s in released] == [("b1", RELEASED, "ops.oncall")]
    assert [s.batch_id for s in to_evaluate(ledger, SOURCE, "v2", DAY)] == ["b1"], "a released slice waits"
    assert release(ledger, SOURCE, "F9", by="ops.oncall") == []

    # Publishing b1's slice makes every consumer downstream of silver take b1 in again.
    ledger.mark_processed(CONSUMER, SOURCE, DAY, ["b1"])
    ledger.mark_processed("silver.encounters", SOURCE, DAY, ["b1"])
    reopened = record(ledger, SOURCE, DAY, [outcome("b1", "F1", held=False)], "v2", CONSUMER)
    assert reopened == ["b1"]
    assert ledger.processed_batches(CONSUMER, DAY) == {"b1"}
    assert ledger.processed_batches("silver.encounters", DAY) == set()
    assert states(ledger) == {("b1", "F1"): PUBLISHED, ("b2", "F1"): HELD}
    (published,) = held_slices(ledger, SOURCE, statuses=(PUBLISHED,))
    assert published.released_by == "ops.oncall"

    # A bronze backfill of OTHER_DAY re-batched its archives: b2 is gone, its slice superseded.
    assert supersede(ledger, SOURCE, OTHER_DAY, ["b3"]) == 1
    assert states(ledger)[("b2", "F1")] == SUPERSEDED
    assert held_slices(ledger, SOURCE) == []
