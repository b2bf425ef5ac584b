"""`silver.encounters`: the state of each visit, folded from its HL7 ADT events (`silver.adt_events`).

Approach: an encounter is a pure function of the FULL event history of its visit. For each batch the
caller takes the keys the new events touch (`encounter_keys`), re-reads every event of those visits from
`silver.adt_events` (append-only, so the history is complete), calls `derive_encounters` and replaces
the encounters rows of exactly those keys. Nothing is folded into the previous encounter row, so events
that arrive late, out of order, twice or in separate batches give the same row as if they had arrived
together and in order. If the replacement is a `sequence_by` upsert on `last_event_ts`, ties must go to
the recomputed row: a late event older than the visit's last one changes the row but not `last_event_ts`
(stamping `_ingested_at` with the recompute time does this).

Key: (`facility`, `visit_number`); `facility` is the landing-key facility (`_facility`, always present
and the facility the archive was routed for), not MSH-4, which senders fill inconsistently.

Fold, with a visit's events ordered by `message_ts`, ties by `message_control_id`, then by arrival
(`_ingested_at`, `_batch`, `_archive`, `_member`, `_record`, as in `tables.merge.TIE_BREAK`):
- events with no `visit_number`, or a trigger other than A01/A02/A03/A04/A08, are ignored (cancels such
  as A11/A13 are out of scope: a discharge followed by a later A01 simply reads as admitted again);
- a message delivered more than once (same `message_control_id` within the visit) counts once, the
  last copy in the order above wins;
- `status`: the latest status event: A01 and A04 -> `admitted` (A04 registers an outpatient visit; the
  issue has no `registered` state), A02 -> `transferred`, A03 -> `discharged`; A08 changes no status, so
  a visit seen only through A08s has a null status;
- `point_of_care`, `room`, `bed`: together from the latest event carrying any of them, so a unit from
  one message is never paired with a bed from another;
- `patient_id`, `patient_class`: the latest non-null value;
- `admit_ts`: the first non-null PV1-44, else the `message_ts` of the first A01/A04;
- `discharge_ts`: only when the latest status event is an A03: its PV1-45, else its `message_ts`;
- `last_event_ts`: the latest `message_ts`; `event_count`: distinct messages folded;
- lineage (`_archive`, `_member`, `_record`, `_facility`, `_landing_day`, `_ingested_at`, `_batch`): of the
  last event.
"""

from __future__ import annotations

import polars as pl

from medlake_assets.errors import MedlakeError

KEY: tuple[str, ...] = ("facility", "visit_number")
STATUS_BY_TRIGGER: dict[str, str] = {
    "A01": "admitted",
    "A04": "admitted",
    "A02": "transferred",
    "A03": "discharged",
}
TRIGGERS: tuple[str, ...] = (*STATUS_BY_TRIGGER, "A08")
ADMIT_TRIGGERS: tuple[str, ...] = ("A01", "A04")
LOCATION: tuple[str, ...] = ("point_of_care", "room", "bed")
LINEAGE: tuple[str, ...] = (
    "_archive",
    "_member",
    "_record",
    "_facility",
    "_landing_day",
    "_ingested_at",
    "_batch",
)
# Total order of a visit's events: sender's time, then its message id, then arrival (as tables.merge).
EVENT_ORDER: tuple[str, ...] = (
    "message_ts",
    "message_control_id",
    "_ingested_at",
    "_batch",
    "_archive",
    "_member",
    "_record",
)
REQUIRED: tuple[str, ...] = (
    "message_control_id",
    "trigger_event",
    "message_ts",
    "patient_id",
    "patient_class",
    *LOCATION,
    "visit_number",
    "admit_ts",
    "discharge_ts",
    *LINEAGE,
)
_TS = pl.Datetime("us", "UTC")
ENCOUNTER_COLUMNS: tuple[str, ...] = (
    *KEY,
    "patient_id",
    "status",
    "patient_class",
    *LOCATION,
    "admit_ts",
    "discharge_ts",
    "last_event_ts",
    "event_count",
    *LINEAGE,
)


class EncounterInputError(MedlakeError, ValueError):
    """The events frame lacks columns the fold needs (names only, never values)."""


def _check_columns(events: pl.DataFrame) -> None:
    missing = [name for name in REQUIRED if name not in events.columns]
    if missing:
        raise EncounterInputError(f"adt events lack columns needed for encounters: {', '.join(missing)}")


def _visit_events(events: pl.DataFrame) -> pl.LazyFrame:
    """The events that belong to a visit, with the `facility` key column."""
    return (
        events.lazy()
        .filter(
            pl.col("trigger_event").is_in(TRIGGERS)
            & pl.col("visit_number").is_not_null()
            & (pl.col("visit_number") != "")
        )
        .with_columns(pl.col("_facility").alias("facility"))
    )


def encounter_keys(events: pl.DataFrame) -> pl.DataFrame:
    """The (`facility`, `visit_number`) keys a batch of ADT events touches, sorted, one row each."""
    _check_columns(events)
    return _visit_events(events).select(KEY).unique().sort(KEY).collect()


def derive_encounters(events: pl.DataFrame) -> pl.DataFrame:
    """One encounter row per (`facility`, `visit_number`) from the full event history of those visits.

    `events` holds typed `silver.adt_events` rows (timestamps `Datetime("us", "UTC")`, strings elsewhere,
    lineage columns) in any order; the result, sorted by key, has `ENCOUNTER_COLUMNS`. Pass every event of
    each visit: the result is only as complete as the history given (see the module docstring).
    """
    _check_columns(events)
    status = pl.col("status")
    has_location = pl.any_horizontal(pl.col(name).is_not_null() for name in LOCATION)
    return (
        _visit_events(events)
        # Fold order. group_by keeps the row order within each group, so sorting by the key too is not
        # needed (and sorting on fewer string columns is cheaper).
        .sort(EVENT_ORDER)
        # Redeliveries: keep the last copy of a message in fold order.
        .filter(pl.struct(*KEY, "message_control_id").is_last_distinct())
        .with_columns(
            status=pl.col("trigger_event").replace_strict(
                STATUS_BY_TRIGGER, default=None, return_dtype=pl.String
            ),
            # Where a discharge would come from if this event turns out to be the latest status event.
            discharge_ts=pl.when(pl.col("trigger_event") == "A03").then(
                pl.coalesce("discharge_ts", "message_ts")
            ),
        )
        .group_by(KEY)
        .agg(
            pl.col("patient_id").drop_nulls().last(),
            status.drop_nulls().last(),
            pl.col("patient_class").drop_nulls().last(),
            *[pl.col(name).filter(has_location).last() for name in LOCATION],
            pl.coalesce(
                pl.col("admit_ts").drop_nulls().first(),
                pl.col("message_ts").filter(pl.col("trigger_event").is_in(ADMIT_TRIGGERS)).first(),
            ).alias("admit_ts"),
            pl.col("discharge_ts").filter(status.is_not_null()).last(),
            pl.col("message_ts").last().alias("last_event_ts"),
            pl.len().cast(pl.Int64).alias("event_count"),  # Iceberg has no unsigned integers
            *[pl.col(name).last() for name in LINEAGE],
        )
        .with_columns(pl.col("admit_ts", "discharge_ts", "last_event_ts").cast(_TS))
        .select(ENCOUNTER_COLUMNS)
        .sort(KEY)
        .collect()
    )
