"""Property: however events are split into batches and in whatever order the batches are applied, the
merges equal an in-memory reference (the latest event by sequence per key, deletes applied)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from medlake_assets.silver.merge import scd2, upsert

KEY = ["facility_id", "order_id"]
SEQUENCE = ["result_ts", "result_status"]
RANKS = {"result_status": ["P", "F", "C"]}
STATUS_RANK = {"P": 0, "F": 1, "C": 2}
T0 = datetime(2026, 11, 20, tzinfo=UTC)
DATA = ["facility_id", "order_id", "value", "result_status", "result_ts", "op"]
SCHEMA = {
    "facility_id": pl.String,
    "order_id": pl.String,
    "value": pl.String,
    "result_status": pl.String,
    "result_ts": pl.Datetime("us", "UTC"),
    "op": pl.String,
    "_archive": pl.String,
    "_member": pl.String,
    "_record": pl.Int64,
    "_facility": pl.String,
    "_landing_day": pl.Date,
    "_ingested_at": pl.Datetime("us", "UTC"),
    "_batch": pl.String,
}

# Few keys, minutes, statuses and values, so that ties, exact duplicates and deletes are frequent.
event = st.tuples(
    st.sampled_from(["F1", "F2"]),
    st.sampled_from(["O1", "O2", "O3"]),
    st.sampled_from(["a", "b", None]),
    st.sampled_from(["P", "F", "C", None]),
    st.one_of(st.none(), st.integers(0, 3)),
    st.sampled_from(["U", "U", "D"]),
)


@st.composite
def batches(draw: st.DrawFn) -> list[list[dict]]:
    """Events split into batches; each batch gets an arrival time (two batches may share one)."""
    events = draw(st.lists(event, min_size=1, max_size=30))
    cuts = sorted(draw(st.lists(st.integers(1, len(events)), max_size=5, unique=True)))
    bounds = [0, *[cut for cut in cuts if cut < len(events)], len(events)]
    out = []
    for number, (start, end) in enumerate(pairwise(bounds)):
        arrived = T0 + timedelta(hours=draw(st.integers(0, 3)))
        out.append(
            [
                {
                    "facility_id": facility,
                    "order_id": order,
                    "value": value,
                    "result_status": status,
                    "result_ts": None if minute is None else T0 + timedelta(minutes=minute),
                    "op": op,
                    "_archive": f"archive-{number}.zip",
                    "_member": "m.csv",
                    "_record": record,
                    "_facility": facility,
                    "_landing_day": date(2026, 11, 20),
                    "_ingested_at": arrived,
                    "_batch": f"batch-{number}",
                }
                for record, (facility, order, value, status, minute, op) in enumerate(events[start:end], 1)
            ]
        )
    return out


def order_of(row: dict) -> tuple:
    """The documented total order: sequence (nulls lowest, ranked status), then the arrival tie-break."""
    ts, status = row["result_ts"], row["result_status"]
    rank = STATUS_RANK.get(status) if status is not None else None
    return (
        (ts is not None, ts or T0),
        (rank is not None, rank or 0),
        row["_ingested_at"],
        row["_batch"],
        row["_archive"],
        row["_member"],
        row["_record"],
    )


def content(row: dict) -> tuple:
    return tuple(row[name] for name in DATA)


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


@settings(max_examples=150, deadline=None)
@given(split=batches(), data=st.data())
def test_upsert_equals_latest_event_per_key(split: list[list[dict]], data: st.DataObject) -> None:
    events = [row for rows in split for row in rows]
    latest: dict[tuple, dict] = {}
    for row in events:
        key = (row["facility_id"], row["order_id"])
        if key not in latest or order_of(row) > order_of(latest[key]):
            latest[key] = row
    expected = sorted((*content(row), row["op"] == "D") for row in latest.values())

    current = pl.DataFrame()
    for rows in data.draw(st.permutations(split)):
        current = upsert(
            current,
            frame(rows),
            key=KEY,
            sequence_by=SEQUENCE,
            sequence_ranks=RANKS,
            delete_marker=("op", "D"),
        )
    got = current.select(*DATA, "_deleted").rows()
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    # Lineage included: the row is exactly the winning event, whatever the batch order.
    winners = sorted(((row["_archive"], row["_record"]) for row in latest.values()), key=repr)
    assert sorted(current.select("_archive", "_record").rows(), key=repr) == winners


@settings(max_examples=100, deadline=None)
@given(split=batches(), data=st.data())
def test_scd2_equals_one_version_per_sequence(split: list[list[dict]], data: st.DataObject) -> None:
    versions: dict[tuple, dict] = {}
    for row in (row for rows in split for row in rows):
        version = (row["facility_id"], row["order_id"], row["result_ts"], row["result_status"])
        if version not in versions or order_of(row) > order_of(versions[version]):
            versions[version] = row
    by_key: dict[tuple, list[dict]] = {}
    for row in sorted(versions.values(), key=order_of):
        by_key.setdefault((row["facility_id"], row["order_id"]), []).append(row)
    expected = []
    for history in by_key.values():
        for position, row in enumerate(history):
            valid_to = history[position + 1]["result_ts"] if position + 1 < len(history) else None
            expected.append((*content(row), row["result_ts"], valid_to, position == len(history) - 1))

    current = pl.DataFrame()
    for rows in data.draw(st.permutations(split)):
        current = scd2(
            current,
            frame(rows),
            key=KEY,
            sequence_by=SEQUENCE,
            sequence_ranks=RANKS,
            delete_marker=("op", "D"),
        )
    got = current.select(*DATA, "_valid_from", "_valid_to", "_is_current").rows()
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert current.select((pl.col("_deleted") == (pl.col("op") == "D").fill_null(False)).all()).item()
