"""`derive_encounters`: one encounter per (facility, visit_number), whatever order its events arrive in."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.lake import Lake
from medlake_assets.silver.encounters import (
    ENCOUNTER_COLUMNS,
    EVENT_ORDER,
    FOLD_COLUMNS,
    IDS,
    KEY,
    EncounterInputError,
    combine_encounters,
    derive_encounters,
    encounter_keys,
    fold_events,
    order_key,
)
from medlake_assets.silver.encounters_load import ENCOUNTERS, PARTITION_BY, load_encounters
from medlake_assets.silver.tables import ensure_table
from medlake_assets_tests.lake_helpers import local_settings, open_lake

EVENTS = "silver.adt_events"

T0 = datetime(2025, 3, 4, 8, 0, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "message_control_id": pl.String(),
    "message_type": pl.String(),
    "trigger_event": pl.String(),
    "message_ts": TS,
    "sending_facility": pl.String(),
    "patient_id": pl.String(),
    "patient_class": pl.String(),
    "point_of_care": pl.String(),
    "room": pl.String(),
    "bed": pl.String(),
    "visit_number": pl.String(),
    "admit_ts": TS,
    "discharge_ts": TS,
    "_archive": pl.String(),
    "_member": pl.String(),
    "_record": pl.Int64(),
    "_facility": pl.String(),
    "_landing_day": pl.Date(),
    "_ingested_at": TS,
    "_batch": pl.String(),
}


def minutes(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def event(trigger: str, at: int, control_id: str, **fields: object) -> dict[str, object]:
    """One synthetic typed ADT event at T0 + `at` minutes; `fields` override the defaults."""
    row: dict[str, object] = {
        "message_control_id": control_id,
        "message_type": "ADT",
        "trigger_event": trigger,
        "message_ts": minutes(at),
        "sending_facility": "FAC1",
        "patient_id": "P001",
        "patient_class": "I",
        "point_of_care": None,
        "room": None,
        "bed": None,
        "visit_number": "V001",
        "admit_ts": None,
        "discharge_ts": None,
        "_archive": f"{control_id}.zip",
        "_member": f"{control_id}.txt",
        "_record": 1,
        "_facility": "FAC1",
        "_landing_day": date(2025, 3, 4),
        "_ingested_at": minutes(1000),
        "_batch": "b0",
    }
    row.update(fields)
    return row


def frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def arrived(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows as delivered one per batch, in list order: arrival lineage follows the position."""
    return [
        {**row, "_batch": f"b{n}", "_ingested_at": minutes(2000 + n)} for n, row in enumerate(rows, start=1)
    ]


A01 = event("A01", 0, "M1", admit_ts=minutes(-5), point_of_care="ICU", room="101", bed="A")
A02 = event("A02", 120, "M2", admit_ts=minutes(-5), point_of_care="ICU", room="102", bed="B")
A08 = event("A08", 180, "M3", patient_class="O")  # update with no location and no PV1-44
A03 = event(
    "A03",
    240,
    "M4",
    admit_ts=minutes(-5),
    discharge_ts=minutes(238),
    point_of_care="ICU",
    room="102",
    bed="C",
)


@pytest.mark.parametrize(
    "order",
    list(itertools.permutations([A01, A02, A08, A03])),
    ids=lambda order: "-".join(str(row["trigger_event"]) for row in order),
)
def test_every_arrival_order_of_a_visit_gives_the_same_encounter(
    order: tuple[dict[str, object], ...],
) -> None:
    rows = arrived(list(order))
    a03_batch = next(row["_batch"] for row in rows if row["trigger_event"] == "A03")
    # After each batch the caller recomputes from the history so far; the last recompute is the answer.
    history: list[dict[str, object]] = []
    for row in rows:
        history.append(row)
        result = derive_encounters(frame(history))
    assert result.columns == list(ENCOUNTER_COLUMNS)
    assert (
        result.to_dicts()
        == [
            {
                "facility": "FAC1",
                "visit_number": "V001",
                "patient_id": "P001",
                "status": "discharged",
                "patient_class": "I",  # the A03 after the A08 carries it again
                "point_of_care": "ICU",
                "room": "102",
                "bed": "C",
                "admit_ts": minutes(-5),
                "discharge_ts": minutes(238),
                "last_event_ts": minutes(240),
                "event_count": 4,
                "_archive": "M4.zip",
                "_member": "M4.txt",
                "_record": 1,
                "_facility": "FAC1",
                "_landing_day": date(2025, 3, 4),
                "_ingested_at": minutes(2000 + int(str(a03_batch)[1:])),
                "_batch": a03_batch,
            }
        ]
    )


@pytest.mark.parametrize(
    ("events", "status", "patient_class", "location", "discharge_ts", "last_event_ts"),
    [
        ([A01], "admitted", "I", ("ICU", "101", "A"), None, minutes(0)),
        ([A01, A08], "admitted", "O", ("ICU", "101", "A"), None, minutes(180)),
        ([A08, A02], "transferred", "O", ("ICU", "102", "B"), None, minutes(180)),
        ([A03, A01], "discharged", "I", ("ICU", "102", "C"), minutes(238), minutes(240)),
        ([A03, A02, A08], "discharged", "I", ("ICU", "102", "C"), minutes(238), minutes(240)),
    ],
)
def test_status_and_location_of_a_partial_history(
    events: list[dict[str, object]],
    status: str,
    patient_class: str,
    location: tuple[str, str, str],
    discharge_ts: datetime | None,
    last_event_ts: datetime,
) -> None:
    row = derive_encounters(frame(events)).row(0, named=True)
    assert (row["status"], row["patient_class"]) == (status, patient_class)
    assert (row["point_of_care"], row["room"], row["bed"]) == location
    assert row["discharge_ts"] == discharge_ts
    assert row["last_event_ts"] == last_event_ts
    assert row["event_count"] == len(events)


def test_a_redelivered_message_counts_once_and_the_latest_copy_gives_the_lineage() -> None:
    late_copy = {**A03, "_archive": "resent.zip", "_batch": "b9", "_ingested_at": minutes(5000)}
    early_copy = {**A01, "_archive": "again.zip", "_batch": "b8", "_ingested_at": minutes(4000)}
    result = derive_encounters(frame([A01, A02, A03, late_copy, early_copy, A01]))
    row = result.row(0, named=True)
    assert result.height == 1
    assert row["event_count"] == 3
    assert (row["status"], row["discharge_ts"]) == ("discharged", minutes(238))
    assert (row["_archive"], row["_batch"], row["_ingested_at"]) == ("resent.zip", "b9", minutes(5000))


def test_a_visit_seen_only_through_updates_has_no_status() -> None:
    first = event("A08", 10, "U1", point_of_care="ED", room="3", bed=None, admit_ts=minutes(-30))
    second = event("A08", 20, "U2", patient_id="P002")
    row = derive_encounters(frame([second, first])).row(0, named=True)
    assert row["status"] is None
    assert row["patient_id"] == "P002"
    assert (row["point_of_care"], row["room"], row["bed"]) == ("ED", "3", None)
    assert (row["admit_ts"], row["discharge_ts"], row["last_event_ts"]) == (minutes(-30), None, minutes(20))
    assert row["event_count"] == 2


def test_the_same_visit_number_at_two_facilities_is_two_encounters() -> None:
    other = {"_facility": "FAC2", "sending_facility": "FAC2", "patient_id": "Q9"}
    rows = [
        A01,
        A03,
        event("A04", 30, "M1", point_of_care="CLINIC", room="7", bed=None, patient_class="O", **other),
    ]
    result = derive_encounters(frame(rows))
    assert result.select(
        "facility", "visit_number", "patient_id", "status", "point_of_care", "event_count"
    ).rows() == [
        ("FAC1", "V001", "P001", "discharged", "ICU", 2),
        ("FAC2", "V001", "Q9", "admitted", "CLINIC", 1),
    ]
    # A04 without PV1-44: the registration's own time is the admit time.
    assert result["admit_ts"].to_list() == [minutes(-5), minutes(30)]
    assert encounter_keys(frame(rows)).rows() == [("FAC1", "V001"), ("FAC2", "V001")]


def test_null_locations_keep_the_last_known_location_whole() -> None:
    rows = [
        event("A01", 0, "L1", point_of_care="MED", room="201", bed="A"),
        event("A02", 10, "L2", point_of_care="SURG", room="305", bed=None),  # moved, bed not yet known
        event("A08", 20, "L3"),  # no location at all: does not erase
    ]
    row = derive_encounters(frame(rows)).row(0, named=True)
    assert (row["point_of_care"], row["room"], row["bed"]) == ("SURG", "305", None)
    assert row["status"] == "transferred"


def test_admit_falls_back_to_the_first_admit_message_time() -> None:
    rows = [event("A08", 5, "F2"), event("A01", 3, "F1"), event("A01", 9, "F3")]
    assert derive_encounters(frame(rows))["admit_ts"].to_list() == [minutes(3)]


def test_discharge_without_pv1_45_uses_the_message_time_and_a_later_admit_reopens() -> None:
    discharge = event("A03", 50, "D2")
    assert derive_encounters(frame([A01, discharge]))["discharge_ts"].to_list() == [minutes(50)]
    readmit = event("A01", 60, "D3")
    row = derive_encounters(frame([A01, discharge, readmit])).row(0, named=True)
    assert (row["status"], row["discharge_ts"]) == ("admitted", None)


def test_ties_on_message_time_go_to_the_control_id_then_arrival() -> None:
    rows = [
        event("A03", 10, "T2", _batch="b1"),
        event("A02", 10, "T1", _batch="b2", point_of_care="X"),
    ]
    row = derive_encounters(frame(rows)).row(0, named=True)
    assert (row["status"], row["_batch"]) == ("discharged", "b1")


def test_events_without_a_visit_or_with_other_triggers_are_ignored() -> None:
    rows = [
        A01,
        event("A11", 30, "X1"),  # cancel admit: out of scope
        event("A02", 40, "X2", visit_number=None),
        event("A02", 50, "X3", visit_number=""),
    ]
    result = derive_encounters(frame(rows))
    assert result.select("visit_number", "status", "event_count", "last_event_ts").rows() == [
        ("V001", "admitted", 1, minutes(0))
    ]


def test_no_events_give_an_empty_frame_with_the_encounter_schema() -> None:
    result = derive_encounters(frame([]))
    assert result.height == 0
    assert result.columns == list(ENCOUNTER_COLUMNS)
    assert result.schema["admit_ts"] == TS
    assert result.schema["status"] == pl.String()
    assert result.schema["event_count"] == pl.Int64()


def test_missing_columns_are_named() -> None:
    with pytest.raises(
        EncounterInputError, match="^adt events lack columns needed for encounters: room, bed$"
    ):
        derive_encounters(frame([A01]).drop("room", "bed"))


# ----------------------------------------------------------------------------------- property: Python fold

STATUS = {"A01": "admitted", "A04": "admitted", "A02": "transferred", "A03": "discharged"}


def reference(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The fold written the obvious way: per visit, sort by time, drop redeliveries, walk the events."""
    order = ("message_ts", "message_control_id", "_ingested_at", "_batch", "_archive", "_member", "_record")
    visits: dict[tuple[object, object], list[dict[str, object]]] = {}
    for row in rows:
        if row["trigger_event"] in (*STATUS, "A08") and row["visit_number"]:
            visits.setdefault((row["_facility"], row["visit_number"]), []).append(row)
    result = []
    for (facility, visit_number), group in sorted(visits.items()):
        group.sort(key=lambda row: tuple(row[name] for name in order))
        last_copy = {row["message_control_id"]: n for n, row in enumerate(group)}
        group = [row for n, row in enumerate(group) if last_copy[row["message_control_id"]] == n]
        state: dict[str, object] = dict.fromkeys(
            (
                "patient_id",
                "status",
                "patient_class",
                "point_of_care",
                "room",
                "bed",
                "admit_ts",
                "discharge_ts",
            )
        )
        first_admit_message = None
        for row in group:
            for name in ("patient_id", "patient_class"):
                if row[name] is not None:
                    state[name] = row[name]
            if any(row[name] is not None for name in ("point_of_care", "room", "bed")):
                state.update({name: row[name] for name in ("point_of_care", "room", "bed")})
            if state["admit_ts"] is None:
                state["admit_ts"] = row["admit_ts"]
            if first_admit_message is None and row["trigger_event"] in ("A01", "A04"):
                first_admit_message = row["message_ts"]
            if row["trigger_event"] in STATUS:
                state["status"] = STATUS[str(row["trigger_event"])]
                discharged = row["discharge_ts"] or row["message_ts"]
                state["discharge_ts"] = discharged if row["trigger_event"] == "A03" else None
        if state["admit_ts"] is None:
            state["admit_ts"] = first_admit_message
        last = group[-1]
        result.append(
            {
                "facility": facility,
                "visit_number": visit_number,
                **state,
                "last_event_ts": last["message_ts"],
                "event_count": len(group),
                **{name: last[name] for name in ENCOUNTER_COLUMNS if name.startswith("_")},
            }
        )
    return [{name: row[name] for name in ENCOUNTER_COLUMNS} for row in result]


def maybe(values: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.none(), values)


# Small value pools so that time ties, redelivered control ids and shared visit numbers happen often.
random_event = st.builds(
    lambda trigger,
    at,
    control,
    facility,
    visit,
    patient,
    klass,
    poc,
    room,
    bed,
    admit,
    discharge,
    batch: event(
        trigger,
        at,
        f"C{control}",
        _facility=facility,
        visit_number=visit,
        patient_id=patient,
        patient_class=klass,
        point_of_care=poc,
        room=room,
        bed=bed,
        admit_ts=None if admit is None else minutes(admit),
        discharge_ts=None if discharge is None else minutes(discharge),
        _batch=f"b{batch}",
        _ingested_at=minutes(1000 + batch),
    ),
    st.sampled_from(["A01", "A02", "A03", "A04", "A08", "A11"]),
    st.integers(0, 6),
    st.integers(0, 8),
    st.sampled_from(["FAC1", "FAC2"]),
    maybe(st.sampled_from(["V1", "V2"])),
    maybe(st.sampled_from(["P1", "P2"])),
    maybe(st.sampled_from(["I", "O", "E"])),
    maybe(st.sampled_from(["ICU", "MED"])),
    maybe(st.sampled_from(["1", "2"])),
    maybe(st.sampled_from(["A", "B"])),
    maybe(st.integers(-60, 0)),
    maybe(st.integers(0, 60)),
    st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(random_event, max_size=14), st.randoms(use_true_random=False))
def test_matches_a_python_fold_for_random_histories(
    rows: list[dict[str, object]], rng: random.Random
) -> None:
    rng.shuffle(rows)
    assert derive_encounters(frame(rows)).to_dicts() == reference(rows)


# ----------------------------------------------------------------------- incremental fold (fold_events)

DAYS = (date(2025, 3, 3), date(2025, 3, 4), date(2025, 3, 5))


def random_messages(rng: random.Random, visits: int) -> list[dict[str, object]]:
    """Distinct messages of `visits` visits (ids unique per visit), with time ties, nulls, messages
    without a visit and out-of-scope triggers; `(facility, visit_number)` pairs may repeat (same visit)."""
    rows = []
    for visit in range(visits):
        facility, number = rng.choice(["FAC1", "FAC2"]), rng.choice([f"V{n}" for n in range(visits // 2 + 1)])
        for n in range(rng.randint(1, 7)):
            location = rng.choice(
                [(None, None, None), ("ICU", "1", None), ("MED", "2", "B"), (None, None, "A")]
            )
            rows.append(
                event(
                    rng.choice(["A01", "A02", "A03", "A04", "A08", "A08", "A11"]),
                    rng.randint(0, 12),
                    f"C{rng.randint(0, 99):02d}-{visit}-{n}",
                    _facility=facility,
                    visit_number=rng.choice([number] * 12 + [None, ""]),
                    patient_id=rng.choice(["P1", "P2", None]),
                    patient_class=rng.choice(["I", "O", None]),
                    point_of_care=location[0],
                    room=location[1],
                    bed=location[2],
                    admit_ts=rng.choice([None, None, minutes(rng.randint(-90, 0))]),
                    discharge_ts=rng.choice([None, minutes(rng.randint(0, 90))]),
                )
            )
    return rows


def delivered_batches(rng: random.Random, messages: list[dict[str, object]]) -> list[list[dict[str, object]]]:
    """The messages delivered in batches, in processing order: some twice or three times (identical
    copies, each with its own arrival lineage), shuffled, each batch on a random landing day."""
    copies = [row for row in messages for _ in range(rng.choice([1, 1, 1, 2, 3]))]
    rng.shuffle(copies)
    cuts = sorted(rng.sample(range(1, len(copies)), min(len(copies) - 1, rng.randint(1, 8))))
    batches = []
    for number, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(copies)], strict=True)):
        day = rng.choice(DAYS)
        batches.append(
            [
                {
                    **row,
                    "_batch": f"b{number:02d}",
                    "_ingested_at": minutes(1000 + number),
                    "_landing_day": day,
                    "_archive": f"{day}/b{number:02d}.zip",
                    "_member": f"m{record % 3}.hl7",
                    "_record": record,
                }
                for record, row in enumerate(copies[start:stop], start=1)
            ]
        )
    return batches


def fold_batches(batches: list[list[dict[str, object]]]) -> pl.DataFrame:
    """`silver.encounters` as the loader keeps it, in memory: each batch folded into the rows it touches."""
    table = fold_events(frame([]))
    for batch in batches:
        touched = combine_encounters(table, fold_events(frame(batch)))
        table = pl.concat([table.join(touched.select(KEY), on=list(KEY), how="anti"), touched]).sort(KEY)
    return table


@pytest.mark.parametrize("seed", range(60))
def test_folding_batches_one_at_a_time_gives_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    batches = delivered_batches(rng, random_messages(rng, visits=rng.randint(1, 14)))
    replayed = [*batches, *rng.sample(batches, rng.randint(0, 2))]  # a batch taken in twice changes nothing
    everything = frame([row for batch in batches for row in batch])
    expected = derive_encounters(everything)
    folded = fold_batches(replayed)
    assert folded.select(ENCOUNTER_COLUMNS).to_dicts() == expected.to_dicts()
    assert folded.columns == [*ENCOUNTER_COLUMNS, *FOLD_COLUMNS]
    assert fold_batches(list(reversed(batches))).select(ENCOUNTER_COLUMNS).equals(expected)
    assert fold_events(everything).equals(folded), "the state too is the state of the whole history"


def test_order_keys_sort_as_the_event_order() -> None:
    rng = random.Random(7)
    texts = [None, "", "a", "a\x00", "a\x00b", "a\x01", "a\x01\x01", "a\x02", "ab", "b", "é"]
    rows = [
        {
            "message_ts": rng.choice([None, datetime(1901, 1, 1, tzinfo=UTC), minutes(0), minutes(1)]),
            "message_control_id": rng.choice(texts),
            "_ingested_at": rng.choice([None, minutes(0)]),
            "_batch": rng.choice(texts),
            "_archive": rng.choice(texts),
            "_member": rng.choice(texts),
            "_record": rng.choice([None, -3, 0, 2, 10]),
        }
        for _ in range(400)
    ]
    events = pl.DataFrame(rows, schema={name: EVENT_SCHEMA[name] for name in EVENT_ORDER})
    by_columns = events.sort(EVENT_ORDER, nulls_last=False)
    by_key = events.with_columns(order_key().alias("key")).sort("key").drop("key")
    assert by_key.equals(by_columns)
    assert not events.with_columns(order_key().alias("key"))["key"].str.contains("\x00").any()


def test_copies_that_differ_all_take_part_in_the_fold_as_documented() -> None:
    # The same message (M3) delivered again later with its patient class dropped: the reference keeps only
    # the later copy (class from the A01), the fold still has the earlier copy's "O" (module docstring).
    changed = {**A08, "patient_class": None, "_batch": "b9", "_ingested_at": minutes(5000)}
    rows = [A01, A08, changed]
    reference_row = derive_encounters(frame(rows)).row(0, named=True)
    folded = fold_batches([[A01, A08], [changed]]).row(0, named=True)
    assert (reference_row["patient_class"], folded["patient_class"]) == ("I", "O")
    assert {key: value for key, value in folded.items() if key != "patient_class"} == {
        key: value for key, value in reference_row.items() if key != "patient_class"
    } | {key: folded[key] for key in FOLD_COLUMNS}
    assert folded["event_count"] == 2 and folded["_batch"] == "b9"


def test_no_events_fold_to_an_empty_frame_with_the_state_schema() -> None:
    result = fold_events(frame([]))
    assert result.height == 0
    assert result.columns == [*ENCOUNTER_COLUMNS, *FOLD_COLUMNS]
    assert result.schema[IDS] == pl.List(pl.String())
    assert result.schema["event_count"] == pl.Int64()


# ------------------------------------------------------------------------- real Iceberg (load_encounters)


def publish(lake: Lake, batch: list[dict[str, object]]) -> date:
    """Append a batch to `silver.adt_events` and record it as silver's, as `load_silver` would."""
    rows = frame(batch)
    table = ensure_table(lake.catalog, EVENTS, rows.to_arrow().schema, ["_landing_day"])
    table.append(rows.to_arrow().cast(table.schema().as_arrow()))
    day = batch[0]["_landing_day"]
    assert isinstance(day, date)
    lake.ledger.mark_processed(EVENTS, "adt_events", day, [str(batch[0]["_batch"])])
    return day


def stored_encounters(lake: Lake) -> pl.DataFrame:
    rows = pl.from_arrow(lake.catalog.load_table(ENCOUNTERS).scan().to_arrow())
    assert isinstance(rows, pl.DataFrame)
    assert not rows.get_column("_deleted").any()
    return rows.sort(KEY)


def without_load_time(rows: pl.DataFrame) -> list[dict[str, object]]:
    return rows.select(name for name in ENCOUNTER_COLUMNS if name != "_ingested_at").to_dicts()


@pytest.mark.parametrize("seed", [3, 11])
def test_load_encounters_over_batches_and_days_gives_the_reference(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    batches = delivered_batches(rng, random_messages(rng, visits=30))
    lake = open_lake(local_settings(tmp_path))
    spec = lake.sources["adt_events"]
    outcomes = []
    for number, batch in enumerate(batches):
        publish(lake, batch)
        if number % 3 != 1:  # now and then two batches (of any days) are taken in by one run
            outcomes += [load_encounters(lake, spec, day, chunk_rows=5) for day in DAYS]
    outcomes += [load_encounters(lake, spec, day, chunk_rows=5) for day in DAYS]
    stored = stored_encounters(lake)
    expected = derive_encounters(frame([row for batch in batches for row in batch]))
    assert without_load_time(stored) == without_load_time(expected)
    assert stored.select(FOLD_COLUMNS).equals(fold_batches(batches).select(FOLD_COLUMNS))
    assert sum(outcome["batches"] for outcome in outcomes) == len(batches)
    assert not any(outcome.get("full_history") for outcome in outcomes)


def test_a_table_from_before_the_fold_state_is_folded_from_every_event_once(tmp_path) -> None:
    rng = random.Random(5)
    batches = delivered_batches(rng, random_messages(rng, visits=20))
    lake = open_lake(local_settings(tmp_path))
    spec = lake.sources["adt_events"]
    early, late = batches[: len(batches) // 2], batches[len(batches) // 2 :]
    for batch in early:  # encounters as the code before the fold state wrote them
        publish(lake, batch)
    old_rows = derive_encounters(frame([row for batch in early for row in batch])).with_columns(
        pl.lit(False).alias("_deleted")
    )
    old = ensure_table(lake.catalog, ENCOUNTERS, old_rows.to_arrow().schema, PARTITION_BY)
    old.append(old_rows.to_arrow().cast(old.schema().as_arrow()))
    for batch in early:
        lake.ledger.mark_processed(ENCOUNTERS, "adt_events", batch[0]["_landing_day"], [batch[0]["_batch"]])

    day = publish(lake, late[0])
    first = load_encounters(lake, spec, day, chunk_rows=5)
    assert first["full_history"] is True
    assert stored_encounters(lake).get_column("_fold_last_at").null_count() == 0
    for batch in late[1:]:
        assert load_encounters(lake, spec, publish(lake, batch), chunk_rows=5)["full_history"] is False
    expected = derive_encounters(frame([row for batch in batches for row in batch]))
    assert without_load_time(stored_encounters(lake)) == without_load_time(expected)
