"""`silver.encounters`: the state of each visit, folded from its HL7 ADT events (`silver.adt_events`).

Reference definition: `derive_encounters`, an encounter as a pure function of the FULL event history of
its visit (the rules below). Events that arrive late, out of order, twice or in separate batches give the
same row as if they had arrived together and in order.

Incremental fold (what `encounters_load` runs): every output column is either the LAST or the FIRST of
the visit's events in fold order that supplies it, so each encounter row carries, per component, the
order key of the event that supplied it (`_fold_*_at`: the fold order encoded as one sortable string),
the two admit candidates and the set of message ids seen (`_fold_ids`). `fold_events(new events)` gives
the rows of a batch's events alone, `combine_encounters(current rows, those rows)` keeps per component
the value with the larger (or, for admit, smaller) key and unions the ids. Both are associative and
commutative, so folding batches one at a time, in any order, gives `fold_events(all events)`, and a batch
folded twice changes nothing. The state lives in the encounters rows themselves (columns starting with
`_fold_`, described in the table docs, dropped by the deid views) so that an encounter and the state it is
read from are always committed together.

`fold_events(events)` equals `derive_encounters(events)` on every encounter column when the copies of a
redelivered message (same `message_control_id` within the visit) are identical apart from their arrival
lineage (`_ingested_at`, `_batch`, `_archive`, `_member`, `_record`). When copies differ in `message_ts`
or in a folded field (trigger, patient, class, location, PV1-44/45), the fold cannot drop the earlier
copy once folded: every copy then takes part in the components (an earlier copy can still supply the
latest non-null patient id, class, location or status, or the first admit), while `event_count` still
counts the message once and the lineage is still that of the latest copy. `derive_encounters` instead
keeps only the latest copy for every component.

Key: (`facility`, `visit_number`); `facility` is the landing-key facility (`_facility`, always present
and the facility the archive was routed for), not MSH-4, which senders fill inconsistently.

Fold, with a visit's events ordered by `message_ts`, ties by `message_control_id`, then by arrival
(`_ingested_at`, `_batch`, `_archive`, `_member`, `_record`, as in `tables.merge.TIE_BREAK`):
- events with no `visit_number`, or a trigger other than A01/A02/A03/A04/A08, are ignored (cancels such
  as A11/A13 are out of scope: a discharge followed by a later A01 simply reads as admitted again);
- a message delivered more than once (same `message_control_id` within the visit) counts once, the
  last copy in the order above wins (see above for copies that differ);
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

from dataclasses import dataclass

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


# ---------------------------------------------------------------------------------- incremental fold state

LAST_AT = "_fold_last_at"
ADMIT_PV1 = "_fold_admit_pv1"  # the first non-null PV1-44
ADMIT_MESSAGE = "_fold_admit_message_ts"  # the message_ts of the first A01/A04
IDS = "_fold_ids"


@dataclass(frozen=True)
class Component:
    """Columns an encounter takes from one event: the last (or first) in fold order that supplies them."""

    at: str  # state column: the sortable order key of the supplying event (null: none yet)
    values: tuple[str, ...]
    first: bool = False


COMPONENTS: tuple[Component, ...] = (
    Component(LAST_AT, ("last_event_ts", *LINEAGE)),
    Component("_fold_status_at", ("status", "discharge_ts")),
    Component("_fold_location_at", LOCATION),
    Component("_fold_patient_id_at", ("patient_id",)),
    Component("_fold_patient_class_at", ("patient_class",)),
    Component("_fold_admit_pv1_at", (ADMIT_PV1,), first=True),
    Component("_fold_admit_message_at", (ADMIT_MESSAGE,), first=True),
)
FOLD_COLUMNS: tuple[str, ...] = (
    *(component.at for component in COMPONENTS),
    ADMIT_PV1,
    ADMIT_MESSAGE,
    IDS,
)
_STRINGS: tuple[str, ...] = ("message_control_id", "_batch", "_archive", "_member")
_TIMES: tuple[str, ...] = ("message_ts", "_ingested_at")
_SIGN = 1 << 63


def _sortable(name: str) -> pl.Expr:
    """One `EVENT_ORDER` column as text whose byte order is the column's order (nulls first), and that no
    later column can blur: a null is "\\x01", a value "\\x02" and then a 20-digit number (a time in
    microseconds or `_record`, the sign bit flipped so negatives sort first) or the string with "\\x01" and
    "\\x00" escaped as "\\x01\\x03" and "\\x01\\x02", ended by "\\x01\\x01" (no NUL: DuckDB reads these)."""
    column = pl.col(name)
    if name in _STRINGS:
        escaped = column.cast(pl.String).str.replace_all("\x01", "\x01\x03", literal=True)
        body = escaped.str.replace_all("\x00", "\x01\x02", literal=True) + pl.lit("\x01\x01")
    else:
        number = column.dt.epoch("us") if name in _TIMES else column.cast(pl.Int64)
        body = (number.reinterpret(signed=False) ^ pl.lit(_SIGN, dtype=pl.UInt64)).cast(pl.String)
        body = body.str.zfill(20)
    return pl.when(column.is_null()).then(pl.lit("\x01")).otherwise(pl.lit("\x02") + body)


def order_key() -> pl.Expr:
    """The fold order (`EVENT_ORDER`) of an event as one string: keys compare as the events do."""
    return pl.concat_str([_sortable(name) for name in EVENT_ORDER])


def _event_states(events: pl.DataFrame) -> pl.LazyFrame:
    """Each event of a visit as the encounter state of that event alone."""
    key = order_key()
    status = pl.col("trigger_event").replace_strict(STATUS_BY_TRIGGER, default=None, return_dtype=pl.String)
    admits = pl.col("trigger_event").is_in(ADMIT_TRIGGERS)
    has_location = pl.any_horizontal(pl.col(name).is_not_null() for name in LOCATION)
    supplies = {
        LAST_AT: pl.lit(True),
        "_fold_status_at": status.is_not_null(),
        "_fold_location_at": has_location,
        "_fold_patient_id_at": pl.col("patient_id").is_not_null(),
        "_fold_patient_class_at": pl.col("patient_class").is_not_null(),
        "_fold_admit_pv1_at": pl.col("admit_ts").is_not_null(),
        "_fold_admit_message_at": admits,
    }
    return _visit_events(events).with_columns(
        *(pl.when(supplies[component.at]).then(key).alias(component.at) for component in COMPONENTS),
        status.alias("status"),
        pl.when(pl.col("trigger_event") == "A03")
        .then(pl.coalesce("discharge_ts", "message_ts"))
        .alias("discharge_ts"),
        pl.col("message_ts").alias("last_event_ts"),
        pl.col("admit_ts").alias(ADMIT_PV1),
        pl.when(admits).then(pl.col("message_ts")).alias(ADMIT_MESSAGE),
        pl.concat_list(pl.col("message_control_id").cast(pl.String)).alias(IDS),
    )


def _combine_states(states: pl.LazyFrame) -> pl.DataFrame:
    """One encounter row per key from any number of state rows of it (events or earlier encounters)."""
    picks = []
    for component in COMPONENTS:
        # The row whose key is the largest (smallest for a first) supplies the component's values: one
        # pass over the group (arg_max skips nulls, the keys of rows that do not supply the component),
        # where sorting the group again for each value column took half of the encounters step. A group
        # where no row supplies it has no such row, and `get` gives nulls.
        at = pl.col(component.at)
        supplier = at.arg_min() if component.first else at.arg_max()
        picks += [pl.col(name).get(supplier) for name in component.values]
        picks.append(at.min() if component.first else at.max())
    return (
        states.group_by(KEY)
        .agg(*picks, pl.col(IDS).flatten().drop_nulls().unique().sort())
        .with_columns(
            pl.coalesce(ADMIT_PV1, ADMIT_MESSAGE).alias("admit_ts"),
            pl.col(IDS).list.len().cast(pl.Int64).alias("event_count"),
        )
        .with_columns(pl.col("admit_ts", "discharge_ts", "last_event_ts", ADMIT_PV1, ADMIT_MESSAGE).cast(_TS))
        .select(*ENCOUNTER_COLUMNS, *FOLD_COLUMNS)
        .sort(KEY)
        .collect()
    )


def fold_events(events: pl.DataFrame) -> pl.DataFrame:
    """The encounter rows (`ENCOUNTER_COLUMNS` then `FOLD_COLUMNS`) of these events alone, by key.

    On a visit's whole history it equals `derive_encounters` (module docstring: except where copies of a
    message differ); on a batch it is the partial state that `combine_encounters` folds into the rows so far.
    """
    _check_columns(events)
    return _combine_states(_event_states(events))


def combine_encounters(current: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
    """The encounter rows of `batch`'s keys with the events folded so far (`current`, rows of any keys with
    their `FOLD_COLUMNS`) folded in: the same rows as `fold_events` over both histories together."""
    touched = current.join(batch.select(KEY), on=list(KEY), how="semi")
    columns = [*ENCOUNTER_COLUMNS, *FOLD_COLUMNS]
    return _combine_states(pl.concat([touched.select(columns), batch.select(columns)]).lazy())
