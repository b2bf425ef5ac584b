"""`medlake bench encounters`: the cost of one `silver.encounters` run as a landing day fills up.

`batches` ADT batches of `events` events each land in ONE landing day of `silver.adt_events` (appended to
a real Iceberg table and recorded in the ledger as silver's, as `load_silver` leaves them); after each,
`load_encounters` takes it in and is timed. A batch's events are a third new visits and two thirds more
events of visits opened in earlier batches (long stays, transfers, updates), spread over `facilities`
facilities, with seeded random triggers, times and locations; a few percent are redelivered copies. The
report is each run's time, its parts where the loader reports them (reading the events it folds; the
fold, combine and copy-on-write merge into `silver.encounters`), and the ratio of the last runs to the
first ones: a cost that grows with the day (re-reading every touched visit's history) shows as a ratio
that grows with `batches`; a cost of the new events only stays near 1.

The events carry the columns the fold reads plus lineage only (the real table has ~30 more, which a
history re-read would also scan), so a re-read's cost is if anything understated.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table

DAY = date(2026, 1, 15)
TRIGGERS = np.array(["A01", "A02", "A03", "A04", "A08"])
UNITS = np.array(["ICU", "MED", "SURG", "ED", "PEDS"])
_TS = pl.Datetime("us", "UTC")
EVENTS = "silver.adt_events"


@dataclass
class EncountersRun:
    batch: int
    day_events: int
    visits: int
    seconds: float
    read_seconds: float | None  # reading the events the run folds (None: a loader that does not say)
    merge_seconds: float | None


@dataclass
class EncountersBenchmark:
    runs: list[EncountersRun]
    window: int

    @property
    def ratio(self) -> float:
        """Mean time of the last `window` runs over that of the first `window` (1 = flat)."""
        first = [run.seconds for run in self.runs[: self.window]]
        last = [run.seconds for run in self.runs[-self.window :]]
        return (sum(last) / len(last)) / (sum(first) / len(first))

    def __rich__(self) -> Table:
        table = Table(title=f"silver.encounters per run; last/first {self.window} runs: {self.ratio:.2f}x")
        for column in ("batch", "events in the day", "visits touched", "seconds", "read events", "merge"):
            table.add_column(column, justify="right")
        for run in self.runs:
            parts = [
                f"{part:.2f}" if part is not None else "-" for part in (run.read_seconds, run.merge_seconds)
            ]
            table.add_row(
                str(run.batch), f"{run.day_events:,}", f"{run.visits:,}", f"{run.seconds:.2f}", *parts
            )
        return table


def batch_events(
    number: int, events: int, facilities: int, opened: int, rng: np.random.Generator
) -> pl.DataFrame:
    """One batch of typed ADT events (the columns `derive_encounters` needs); `opened` visits exist."""
    new = events // 3
    visit = (
        np.concatenate([np.arange(opened, opened + new), rng.integers(0, max(opened, 1), events - new)])
        if opened
        else np.arange(opened, opened + events)
    )
    start = datetime(2026, 1, 15, tzinfo=UTC)
    message_ts = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 86_400, visit.size)]
    ids = [f"M{number:04d}-{n:06d}" for n in range(visit.size)]
    copies = rng.random(visit.size) < 0.03  # redelivered: the same message again, later in the batch
    order = np.concatenate([np.arange(visit.size), np.flatnonzero(copies)])
    loaded = datetime.now(UTC)
    columns = {
        "message_control_id": [ids[n] for n in order],
        "trigger_event": TRIGGERS[rng.integers(0, TRIGGERS.size, visit.size)][order],
        "message_ts": [message_ts[n] for n in order],
        "patient_id": [f"P{v:08d}" for v in visit[order]],
        "patient_class": np.where(rng.random(visit.size) < 0.8, "I", "O")[order],
        "point_of_care": UNITS[rng.integers(0, UNITS.size, visit.size)][order],
        "room": [str(r) for r in rng.integers(100, 400, visit.size)[order]],
        "bed": np.where(rng.random(visit.size) < 0.5, "A", "B")[order],
        "visit_number": [f"V{v:09d}" for v in visit[order]],
        "admit_ts": [None] * order.size,
        "discharge_ts": [None] * order.size,
        "_archive": [
            f"landing/adt_events/2026/01/15/F{v % facilities:04d}/b{number:04d}.zip" for v in visit[order]
        ],
        "_member": [f"m{n % 50:02d}.hl7" for n in order],
        "_record": np.arange(1, order.size + 1),
        "_facility": [f"F{v % facilities:04d}" for v in visit[order]],
        "_landing_day": [DAY] * order.size,
        "_ingested_at": [loaded] * order.size,
        "_batch": [f"adt_events-{DAY}-{number:04d}"] * order.size,
    }
    return pl.DataFrame(columns).with_columns(
        pl.col("message_ts", "admit_ts", "discharge_ts", "_ingested_at").cast(_TS),
        pl.col("_record").cast(pl.Int64),
    )


def run_encounters_benchmark(
    *, batches: int, events: int, facilities: int, seed: int, window: int, work_dir: Path | None
) -> EncountersBenchmark:
    from medlake_assets.defs.resources import LakeResource
    from medlake_assets.lake.settings import load_settings
    from medlake_assets.silver.encounters_load import load_encounters
    from medlake_assets.silver.tables import ensure_table

    with tempfile.TemporaryDirectory(prefix="medlake-bench-encounters-", dir=work_dir) as scratch:
        settings = load_settings({**os.environ, "MEDLAKE_HOME": str(Path(scratch) / "lake")})
        lake = LakeResource.from_settings(settings).lake()
        spec = lake.sources["adt_events"]
        rng = np.random.default_rng(seed)
        runs = []
        opened = day_events = 0
        for number in range(batches):
            rows = batch_events(number, events, facilities, opened, rng)
            opened = int(rows.get_column("visit_number").str.slice(1).cast(pl.Int64).max() or 0) + 1
            table = ensure_table(lake.catalog, EVENTS, rows.to_arrow().schema, ["_landing_day"])
            table.append(rows.to_arrow().cast(table.schema().as_arrow()))
            lake.ledger.mark_processed(EVENTS, spec.name, DAY, [rows.get_column("_batch")[0]])
            day_events += rows.height
            started = time.perf_counter()
            outcome = load_encounters(lake, spec, DAY)
            seconds = time.perf_counter() - started
            parts = (outcome.get("read_seconds"), outcome.get("merge_seconds"))
            runs.append(EncountersRun(number + 1, day_events, outcome["visits"], seconds, *parts))
        return EncountersBenchmark(runs, window)
