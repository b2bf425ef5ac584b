"""Silver merges on real Iceberg tables (SqlCatalog on SQLite): upsert, scd2, append, partition filters."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import (
    AlwaysFalse,
    And,
    GreaterThanOrEqual,
    In,
    IsNull,
    LessThan,
    LessThanOrEqual,
    Or,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform
from pyiceberg.types import IcebergType, NestedField, StringType, TimestamptzType

from medlake_assets.ingest.bronze import LINEAGE as BRONZE_LINEAGE
from medlake_assets.lake import files as lake_files
from medlake_assets.lake.columns import MERGE_COLUMNS
from medlake_assets.lake.partitions import partition_by_of, touched_partitions
from medlake_assets.silver.merge import (
    MergeConflictError,
    append,
    archive_filter,
    key_bounds_check,
    keys_within_bounds,
    merge_chunks,
    merge_into,
    merge_scope,
    plan_chunks,
    scd2,
    upsert,
)

KEY = ["facility_id", "order_id", "test_code"]
SEQUENCE = ["result_ts", "result_status"]
RANKS = {"result_status": ["P", "F", "C"]}
DELETE = ("op", "D")
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
DATA = ["facility_id", "order_id", "test_code", "value", "result_status", "result_ts", "op"]
DECLARED: list[tuple[str, IcebergType]] = [
    ("facility_id", StringType()),
    ("order_id", StringType()),
    ("test_code", StringType()),
    ("value", StringType()),
    ("result_status", StringType()),
    ("result_ts", TimestamptzType()),
    ("op", StringType()),
]
LINEAGE: list[tuple[str, IcebergType]] = BRONZE_LINEAGE


def ts(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def batch(name: str, rows: Sequence[tuple], *, arrived: int) -> pl.DataFrame:
    """Change rows (facility, order, test, value, status, minute, op) with the lineage of one batch."""
    return pl.DataFrame(
        [
            {
                "facility_id": facility,
                "order_id": order,
                "test_code": test,
                "value": value,
                "result_status": status,
                "result_ts": ts(minute) if minute is not None else None,
                "op": op,
                "_archive": f"{name}.zip",
                "_member": "results.csv",
                "_record": record,
                "_facility": facility,
                "_landing_day": date(2026, 11, 20),
                "_ingested_at": ts(1000 + arrived),
                "_batch": name,
            }
            for record, (facility, order, test, value, status, minute, op) in enumerate(rows, 1)
        ],
        schema={
            "facility_id": pl.String,
            "order_id": pl.String,
            "test_code": pl.String,
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
        },
    )


def make_table(tmp_path: Path, mode: str, partition: str = "identity") -> Table:
    catalog = SqlCatalog(
        "test", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=f"file://{tmp_path / 'warehouse'}"
    )
    catalog.create_namespace_if_not_exists("silver")
    fields = DECLARED + LINEAGE + MERGE_COLUMNS[mode]
    schema = Schema(*[NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(fields, 1)])
    fields_by_partition = {
        "identity": [PartitionField(1, 1000, IdentityTransform(), "facility_id")],
        "bucket": [PartitionField(2, 1000, BucketTransform(4), "order_id_bucket")],
        "none": [],
    }
    spec = PartitionSpec(*fields_by_partition[partition])
    return catalog.create_table(f"silver.lab_results_{mode}", schema=schema, partition_spec=spec)


def apply(table: Table, mode: str, *batches: pl.DataFrame) -> Table:
    for changes in batches:
        table = merge_into(
            table,
            changes,
            mode=mode,  # type: ignore[arg-type]
            key=KEY,
            sequence_by=SEQUENCE,
            sequence_ranks=RANKS,
            delete_marker=DELETE,
            snapshot_properties={"medlake.batch": changes["_batch"][0]},
        )
    return table


def rows(table: Table, columns: Sequence[str]) -> list[tuple]:
    frame = pl.from_arrow(table.scan().to_arrow())
    return sorted(
        frame.select(columns).rows(), key=lambda row: tuple((value is None, str(value)) for value in row)
    )


UPSERT_COLUMNS = [*DATA, "_deleted", "_batch", "_record"]


@pytest.fixture(params=["identity", "none"])
def upsert_table(request: pytest.FixtureRequest, tmp_path: Path) -> Table:
    return make_table(tmp_path, "upsert", request.param)


def test_upsert_out_of_order_updates_keep_the_latest_by_sequence(upsert_table: Table) -> None:
    first = batch(
        "b1", [("F1", "O1", "T1", "7.0", "F", 30, "U"), ("F1", "O2", "T1", "1", "P", 5, "U")], arrived=1
    )
    late = batch(
        "b2", [("F1", "O1", "T1", "6.0", "P", 10, "U"), ("F1", "O2", "T1", "2", "F", 6, "U")], arrived=2
    )
    table = apply(upsert_table, "upsert", first, late)
    assert rows(table, UPSERT_COLUMNS) == [
        ("F1", "O1", "T1", "7.0", "F", ts(30), "U", False, "b1", 1),
        ("F1", "O2", "T1", "2", "F", ts(6), "U", False, "b2", 2),
    ]


def test_upsert_ranks_text_sequence_columns(upsert_table: Table) -> None:
    """Same timestamp: C beats F beats P whatever the arrival order (alphabetically C < F < P)."""
    statuses = batch(
        "b1",
        [
            ("F1", "O1", "T1", "corrected", "C", 10, "U"),
            ("F1", "O1", "T1", "final", "F", 10, "U"),
            ("F1", "O1", "T1", "prelim", "P", 10, "U"),
        ],
        arrived=1,
    )
    late_final = batch("b2", [("F1", "O1", "T1", "final again", "F", 10, "U")], arrived=2)
    table = apply(upsert_table, "upsert", statuses, late_final)
    assert rows(table, UPSERT_COLUMNS) == [("F1", "O1", "T1", "corrected", "C", ts(10), "U", False, "b1", 1)]


def test_upsert_exact_duplicates_and_reruns_keep_the_values(upsert_table: Table) -> None:
    changes = batch(
        "b1",
        [
            ("F1", "O1", "T1", "5", "F", 10, "U"),
            ("F1", "O1", "T1", "5", "F", 10, "U"),
            ("F2", "O9", "T1", "1", "P", 1, "U"),
        ],
        arrived=1,
    )
    table = apply(upsert_table, "upsert", changes)
    before = rows(table, [*UPSERT_COLUMNS, "_ingested_at"])
    assert before == [
        ("F1", "O1", "T1", "5", "F", ts(10), "U", False, "b1", 2, ts(1001)),
        ("F2", "O9", "T1", "1", "P", ts(1), "U", False, "b1", 3, ts(1001)),
    ]
    # The very same batch again (a retried commit): nothing changes at all.
    table = apply(table, "upsert", changes)
    assert rows(table, [*UPSERT_COLUMNS, "_ingested_at"]) == before
    # The same archives reloaded later: the same values and records; the lineage names the reload.
    rerun = changes.with_columns(pl.lit(ts(2000)).alias("_ingested_at"), pl.lit("b1-retry").alias("_batch"))
    table = apply(table, "upsert", rerun)
    assert rows(table, [*UPSERT_COLUMNS, "_ingested_at"]) == [
        ("F1", "O1", "T1", "5", "F", ts(10), "U", False, "b1-retry", 2, ts(2000)),
        ("F2", "O9", "T1", "1", "P", ts(1), "U", False, "b1-retry", 3, ts(2000)),
    ]


def test_upsert_delete_then_reinsert_and_late_older_insert(upsert_table: Table) -> None:
    inserts = batch(
        "b1", [("F1", "O1", "T1", "1", "F", 10, "U"), ("F1", "O2", "T1", "2", "F", 10, "U")], arrived=1
    )
    deletes = batch(
        "b2", [("F1", "O1", "T1", None, "F", 20, "D"), ("F1", "O2", "T1", None, "F", 20, "D")], arrived=2
    )
    # O1 comes back with a later version; O2 gets an older insert after its delete and stays deleted.
    after = batch(
        "b3", [("F1", "O1", "T1", "3", "C", 30, "U"), ("F1", "O2", "T1", "9", "C", 15, "U")], arrived=3
    )
    table = apply(upsert_table, "upsert", inserts, deletes)
    assert rows(table, UPSERT_COLUMNS) == [
        ("F1", "O1", "T1", None, "F", ts(20), "D", True, "b2", 1),
        ("F1", "O2", "T1", None, "F", ts(20), "D", True, "b2", 2),
    ]
    table = apply(table, "upsert", after)
    assert rows(table, UPSERT_COLUMNS) == [
        ("F1", "O1", "T1", "3", "C", ts(30), "U", False, "b3", 1),
        ("F1", "O2", "T1", None, "F", ts(20), "D", True, "b2", 2),
    ]
    live = pl.from_arrow(table.scan(row_filter="_deleted = false").to_arrow())
    assert live.select("order_id", "value").rows() == [("O1", "3")]


def test_upsert_delete_and_insert_in_one_batch(upsert_table: Table) -> None:
    changes = batch(
        "b1",
        [
            ("F1", "O1", "T1", "1", "F", 10, "U"),
            ("F1", "O1", "T1", None, "F", 20, "D"),
            ("F1", "O1", "T1", "0", "P", 5, "U"),
        ],
        arrived=1,
    )
    table = apply(upsert_table, "upsert", changes)
    assert rows(table, UPSERT_COLUMNS) == [("F1", "O1", "T1", None, "F", ts(20), "D", True, "b1", 2)]


def test_upsert_ties_go_to_the_later_arrival(upsert_table: Table) -> None:
    same_batch = batch(
        "b1",
        [("F1", "O1", "T1", "first", "F", 10, "U"), ("F1", "O1", "T1", "second", "F", 10, "U")],
        arrived=1,
    )
    table = apply(upsert_table, "upsert", same_batch)
    # Within a batch the later record wins.
    assert rows(table, UPSERT_COLUMNS) == [("F1", "O1", "T1", "second", "F", ts(10), "U", False, "b1", 2)]
    later = batch("b2", [("F1", "O1", "T1", "third", "F", 10, "U")], arrived=2)
    earlier = batch("b0", [("F1", "O1", "T1", "zeroth", "F", 10, "U")], arrived=0)
    table = apply(table, "upsert", later, earlier)
    # Across batches the later `_ingested_at` wins, even when that batch was applied first.
    assert rows(table, UPSERT_COLUMNS) == [("F1", "O1", "T1", "third", "F", ts(10), "U", False, "b2", 1)]


def test_upsert_null_sequence_sorts_lowest(upsert_table: Table) -> None:
    changes = batch(
        "b1",
        [("F1", "O1", "T1", "dated", "P", 1, "U"), ("F1", "O1", "T1", "undated", "C", None, "U")],
        arrived=1,
    )
    table = apply(upsert_table, "upsert", changes)
    assert rows(table, UPSERT_COLUMNS) == [("F1", "O1", "T1", "dated", "P", ts(1), "U", False, "b1", 1)]


def test_upsert_batch_touching_many_partitions_leaves_the_others_alone(upsert_table: Table) -> None:
    facilities = [f"F{i:02d}" for i in range(12)]
    initial = batch(
        "b1", [(f, f"O-{f}-{n}", "T1", f"v{n}", "P", n, "U") for f in facilities for n in range(3)], arrived=1
    )
    # Touches 9 of 12 facilities: an update, an insert and a delete in three facilities each.
    changes = batch(
        "b2",
        [(f, f"O-{f}-0", "T1", "updated", "F", 50, "U") for f in facilities[:3]]
        + [(f, f"O-{f}-9", "T1", "new", "P", 50, "U") for f in facilities[3:6]]
        + [(f, f"O-{f}-1", "T1", None, "P", 50, "D") for f in facilities[6:9]],
        arrived=2,
    )
    table = apply(upsert_table, "upsert", initial, changes)
    expected = []
    for index, f in enumerate(facilities):
        for n in range(3):
            expected.append((f, f"O-{f}-{n}", "T1", f"v{n}", "P", ts(n), "U", False))
        if index < 3:
            expected[-3] = (f, f"O-{f}-0", "T1", "updated", "F", ts(50), "U", False)
        elif index < 6:
            expected.append((f, f"O-{f}-9", "T1", "new", "P", ts(50), "U", False))
        elif index < 9:
            expected[-2] = (f, f"O-{f}-1", "T1", None, "P", ts(50), "D", True)
    assert rows(table, [*DATA, "_deleted"]) == sorted(
        expected, key=lambda row: tuple((value is None, str(value)) for value in row)
    )
    # One overwrite snapshot carrying the batch id: it removes exactly the files holding a touched key.
    (summary,) = (snapshot.summary for snapshot in table.snapshots()[-1:])
    assert (summary.operation.value, summary["medlake.batch"]) == ("overwrite", "b2")
    if partition_by_of(table) == ["facility_id"]:
        # Identity partitions: the files of the 6 facilities with an update or a delete are replaced; the 3
        # with only new keys and the 3 untouched ones are kept as they are.
        assert (summary["deleted-data-files"], summary["deleted-records"]) == ("6", "18")
        assert summary["added-records"] == "21"  # 18 written again (with the changes) and 3 new keys


def test_merge_scope_covers_the_keys_with_few_values_or_ranges() -> None:
    """Values when few (pyiceberg prunes partitions and files by them), a range when many (an IN is bound
    and projected again for every planned data file), the second key column's range for one facility."""
    one = pl.DataFrame({"facility_id": ["F1", "F1"], "order_id": ["O3", "O7"], "test_code": ["T1", "T1"]})
    assert merge_scope(one, ["facility_id"], KEY) == And(
        In("facility_id", ["F1"]), In("order_id", ["O3", "O7"])
    )
    nulls = pl.DataFrame({"facility_id": ["F2", None], "order_id": ["O7", None], "test_code": ["T1", "T1"]})
    assert merge_scope(nulls, ["bucket(16, facility_id)"], KEY) == Or(
        In("facility_id", ["F2"]), IsNull("facility_id")
    )
    many = pl.DataFrame(
        {
            "facility_id": ["F1"] * 300,
            "order_id": [f"O{n:03d}" for n in range(300)],
            "test_code": ["T1"] * 300,
        }
    )
    assert merge_scope(many, ["bucket(8, order_id)"], KEY) == And(
        In("facility_id", ["F1"]),
        And(GreaterThanOrEqual("order_id", "O000"), LessThanOrEqual("order_id", "O299")),
    )
    assert merge_scope(many.head(0), ["facility_id"], KEY) == AlwaysFalse()
    with pytest.raises(ValueError, match="partition column 'value' is not a key column"):
        merge_scope(one, ["value"], KEY)


SCD2_COLUMNS = [*DATA, "_deleted", "_valid_from", "_valid_to", "_is_current", "_batch"]


@pytest.fixture(params=["identity", "none"])
def scd2_table(request: pytest.FixtureRequest, tmp_path: Path) -> Table:
    return make_table(tmp_path, "scd2", request.param)


def test_scd2_late_change_is_slotted_into_the_history(scd2_table: Table) -> None:
    history = batch(
        "b1",
        [
            ("F1", "O1", "T1", "a", "P", 10, "U"),
            ("F1", "O1", "T1", "c", "F", 30, "U"),
            ("F1", "O2", "T1", "x", "P", 5, "U"),
        ],
        arrived=1,
    )
    late = batch(
        "b2", [("F1", "O1", "T1", "b", "P", 20, "U"), ("F1", "O1", "T1", "d", "C", 40, "U")], arrived=2
    )
    table = apply(scd2_table, "scd2", history, late)
    expected = [
        ("F1", "O1", "T1", "a", "P", ts(10), "U", False, ts(10), ts(20), False, "b1"),
        ("F1", "O1", "T1", "b", "P", ts(20), "U", False, ts(20), ts(30), False, "b2"),
        ("F1", "O1", "T1", "c", "F", ts(30), "U", False, ts(30), ts(40), False, "b1"),
        ("F1", "O1", "T1", "d", "C", ts(40), "U", False, ts(40), None, True, "b2"),
        ("F1", "O2", "T1", "x", "P", ts(5), "U", False, ts(5), None, True, "b1"),
    ]
    assert rows(table, SCD2_COLUMNS) == expected
    # Duplicates of known versions, and the whole of b2 reloaded later: the same versions and validity.
    table = apply(table, "scd2", late.with_columns(pl.lit(ts(3000)).alias("_ingested_at")), history.head(1))
    assert rows(table, SCD2_COLUMNS) == expected


def test_scd2_duplicates_in_a_batch_and_a_delete(scd2_table: Table) -> None:
    changes = batch(
        "b1",
        [
            ("F1", "O1", "T1", "a", "P", 10, "U"),
            ("F1", "O1", "T1", "a", "P", 10, "U"),
            ("F1", "O1", "T1", "a2", "F", 10, "U"),
            ("F1", "O1", "T1", None, "F", 50, "D"),
        ],
        arrived=1,
    )
    table = apply(scd2_table, "scd2", changes)
    assert rows(table, SCD2_COLUMNS) == [
        ("F1", "O1", "T1", "a", "P", ts(10), "U", False, ts(10), ts(10), False, "b1"),
        ("F1", "O1", "T1", "a2", "F", ts(10), "U", False, ts(10), ts(50), False, "b1"),
        ("F1", "O1", "T1", None, "F", ts(50), "D", True, ts(50), None, True, "b1"),
    ]


def test_append_replaces_the_rows_of_the_batch_archives(tmp_path: Path) -> None:
    table = make_table(tmp_path, "append", "identity")
    first = batch(
        "b1", [("F1", "O1", "T1", "1", "F", 10, "U"), ("F2", "O2", "T1", "2", "F", 10, "U")], arrived=1
    )
    second = batch("b2", [("F1", "O1", "T1", "3", "C", 20, "U")], arrived=2)
    table = apply(table, "append", first, second, first)
    assert append(first) is first
    assert rows(table, [*DATA, "_batch"]) == [
        ("F1", "O1", "T1", "1", "F", ts(10), "U", "b1"),
        ("F1", "O1", "T1", "3", "C", ts(20), "U", "b2"),
        ("F2", "O2", "T1", "2", "F", ts(10), "U", "b1"),
    ]
    assert archive_filter(first) == In("_archive", ["b1.zip"])


def test_touched_partitions_per_transform() -> None:
    changes = batch(
        "b1", [("F2", "O1", "T1", "1", "F", 10, "U"), ("F1", "O2", "T1", "2", "F", 60 * 24, "U")], arrived=1
    )
    assert touched_partitions(changes, ["facility_id"], key=KEY) == In("facility_id", ["F1", "F2"])
    assert touched_partitions(changes, ["bucket(16, order_id)"], key=KEY) == In("order_id", ["O1", "O2"])
    assert touched_partitions(changes, ["facility_id", "bucket(4, order_id)"], key=KEY) == And(
        In("facility_id", ["F1", "F2"]), In("order_id", ["O1", "O2"])
    )
    days = touched_partitions(changes.with_columns(pl.col("result_ts").alias("order_ts")), ["day(order_ts)"])
    assert days == Or(
        And(
            GreaterThanOrEqual("order_ts", "2026-11-20T00:00:00+00:00"),
            LessThan("order_ts", "2026-11-21T00:00:00+00:00"),
        ),
        And(
            GreaterThanOrEqual("order_ts", "2026-11-21T00:00:00+00:00"),
            LessThan("order_ts", "2026-11-22T00:00:00+00:00"),
        ),
    )
    assert touched_partitions(changes.head(0), ["facility_id"], key=KEY) == AlwaysFalse()
    with pytest.raises(ValueError, match="partition column 'value' is not a key column"):
        touched_partitions(changes, ["value"], key=KEY)
    with pytest.raises(ValueError, match=r"partition field 'truncate\(4, order_id\)'"):
        touched_partitions(changes, ["truncate(4, order_id)"], key=KEY)


def test_partition_by_of_reads_the_table_spec(tmp_path: Path) -> None:
    catalog = SqlCatalog(
        "test", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=f"file://{tmp_path / 'warehouse'}"
    )
    catalog.create_namespace_if_not_exists("silver")
    fields = DECLARED + LINEAGE
    schema = Schema(*[NestedField(i, name, kind, required=False) for i, (name, kind) in enumerate(fields, 1)])
    spec = PartitionSpec(
        PartitionField(1, 1000, IdentityTransform(), "facility_id"),
        PartitionField(2, 1001, BucketTransform(16), "order_id_bucket"),
        PartitionField(6, 1002, DayTransform(), "result_ts_day"),
    )
    table = catalog.create_table("silver.specs", schema=schema, partition_spec=spec)
    assert partition_by_of(table) == ["facility_id", "bucket(16, order_id)", "day(result_ts)"]


def test_a_stale_table_conflicts_and_merge_into_redoes_the_merge(tmp_path: Path) -> None:
    """Another writer commits between our read and our commit: the commit fails, the merge is redone."""
    table = apply(
        make_table(tmp_path, "upsert"),
        "upsert",
        batch("b1", [("F1", "O1", "T1", "1", "P", 1, "U")], arrived=1),
    )
    stale = table.catalog.load_table(table.name())
    # The other writer changes the same key: the file the stale merge would replace is gone.
    other = apply(
        table,
        "upsert",
        batch("b2", [("F1", "O1", "T1", "2", "P", 1, "U"), ("F1", "O2", "T1", "2", "P", 1, "U")], arrived=2),
    )
    changes = batch("b3", [("F1", "O1", "T1", "3", "F", 2, "U")], arrived=3)
    with pytest.raises(MergeConflictError, match="conflicted with concurrent commits 1 times"):
        merge_into(stale, changes, mode="upsert", key=KEY, sequence_by=SEQUENCE, attempts=1)
    assert rows(other.refresh(), ["order_id", "value"]) == [("O1", "2"), ("O2", "2")]  # nothing landed
    apply(stale, "upsert", changes)
    assert rows(other.refresh(), UPSERT_COLUMNS) == [
        ("F1", "O1", "T1", "3", "F", ts(2), "U", False, "b3", 1),
        ("F1", "O2", "T1", "2", "P", ts(1), "U", False, "b2", 2),
    ]


def test_pure_merges_without_a_table() -> None:
    """The pure functions on frames: an empty current, and untouched keys passed through as they are."""
    first = batch(
        "b1", [("F1", "O1", "T1", "1", "P", 1, "U"), ("F1", "O2", "T1", "2", "P", 1, "U")], arrived=1
    )
    merged = upsert(pl.DataFrame(), first, key=KEY, sequence_by=SEQUENCE, sequence_ranks=RANKS)
    assert merged.columns == [*first.columns, "_deleted"]
    second = batch("b2", [("F1", "O2", "T1", "3", "F", 1, "U")], arrived=2)
    merged = upsert(merged, second, key=KEY, sequence_by=SEQUENCE, sequence_ranks=RANKS)
    assert merged.sort("order_id").select("order_id", "value", "_batch").rows() == [
        ("O1", "1", "b1"),
        ("O2", "3", "b2"),
    ]
    history = scd2(pl.DataFrame(), first, key=KEY, sequence_by=SEQUENCE)
    history = scd2(history, second, key=KEY, sequence_by=SEQUENCE, sequence_ranks=RANKS)
    assert history.sort("order_id", "_is_current").select(
        "order_id", "value", "_valid_to", "_is_current"
    ).rows() == [("O1", "1", None, True), ("O2", "2", ts(1), False), ("O2", "3", None, True)]


def test_plan_chunks_packs_whole_values_splits_a_large_one_and_keeps_nulls_apart() -> None:
    groups = pl.DataFrame(
        {
            "facility_id": ["F1", "F2", "F2", "F2", "F2", "F3", None, "F4"],
            "order_id": ["O1", "O1", "O2", "O3", "O4", "O1", "O1", None],
            "rows": [2, 3, 3, 3, 3, 1, 1, 1],
        }
    )
    plan = plan_chunks(groups, ["facility_id", "order_id"], 5)
    chunk = {(f, o): c for f, o, c in plan.select("facility_id", "order_id", "chunk").iter_rows()}
    # F1 and F3 are packed whole, F2 (12 rows) gets chunks of its own cut between order ids, numbered in
    # the facilities' order (F1, F2, F3: a merge's keys then come sorted by facility), and the groups with
    # a null go to one last chunk.
    assert chunk[("F1", "O1")] == 0
    assert [chunk[("F2", o)] for o in ("O1", "O2", "O3", "O4")] == [1, 1, 2, 2]
    assert chunk[("F3", "O1")] == 3
    assert chunk[(None, "O1")] == chunk[("F4", None)] == 4
    assert plan.height == groups.height


def test_plan_chunks_number_chunks_in_the_first_columns_order() -> None:
    """Whole values around large ones: each chunk's range of the first column lies after the one before."""
    rows = {"F1": 2, "F2": 2, "F3": 9, "F4": 1, "F5": 4, "F6": 8, "F7": 3}
    groups = pl.DataFrame(
        [(facility, f"O{n}", 1) for facility, count in rows.items() for n in range(count)],
        schema={"facility_id": pl.String, "order_id": pl.String, "rows": pl.Int64},
        orient="row",
    )
    plan = plan_chunks(groups, ["facility_id", "order_id"], 5)
    ranges = plan.group_by("chunk").agg(pl.col("facility_id").min().alias("low"), pl.col("facility_id").max())
    ranges = ranges.sort("chunk")
    assert ranges.get_column("chunk").to_list() == list(range(ranges.height))
    lows, highs = ranges.get_column("low").to_list(), ranges.get_column("facility_id").to_list()
    assert all(high <= low for high, low in zip(highs, lows[1:], strict=False))
    assert plan.group_by("chunk").agg(pl.col("rows").sum()).get_column("rows").max() <= 5
    assert plan.sort("chunk", "facility_id", "order_id").get_column("facility_id").is_sorted()


@pytest.mark.parametrize("mode", ["upsert", "scd2"])
@pytest.mark.parametrize("partition", ["identity", "bucket", "none"])
def test_merge_in_chunks_equals_one_merge(tmp_path: Path, partition: str, mode: str) -> None:
    """A batch merged in planned chunks of 2-3 rows (into rows written before, nulls in the key too) gives
    the table one merge gives, in one commit; so do the same chunks given as Parquet files."""
    initial = batch(
        "b1",
        [(f, f"O{n}", "T1", f"v{n}", "P", n, "U") for f in ("F1", "F2", "F3") for n in range(6)]
        + [("F1", None, "T1", "null order", "P", 1, "U")],
        arrived=1,
    )
    changes = batch(
        "b2",
        [("F1", f"O{n}", "T1", "final", "F", 20, "U") for n in range(0, 6, 2)]
        + [("F2", "O9", "T1", "new", "P", 20, "U"), ("F3", "O1", "T1", None, "P", 20, "D")]
        + [
            ("F1", None, "T1", "null order again", "F", 20, "U"),
            (None, "O1", "T1", "no facility", "P", 20, "U"),
        ],
        arrived=2,
    )
    key = ["facility_id", "order_id"]
    groups = changes.group_by(key).agg(pl.len().alias("rows"))
    plan = plan_chunks(groups, key, 2)
    numbered = changes.join(plan.select(*key, "chunk"), on=key, how="left", nulls_equal=True)
    parts = [part.drop("chunk") for _, part in sorted(numbered.partition_by("chunk", as_dict=True).items())]
    assert len(parts) >= 4

    def as_file(part: pl.DataFrame, path: Path) -> Path:
        part.write_parquet(path)
        return path

    def merged(chunks: list[pl.DataFrame], home: Path, files: bool = False) -> list[tuple]:
        table = apply(make_table(home, mode, partition), mode, initial)
        before = len(table.snapshots())
        table = merge_chunks(
            table,
            [
                as_file(part, home / f"part-{n}.parquet") if files else lambda part=part: part
                for n, part in enumerate(chunks)
            ],
            mode=mode,  # type: ignore[arg-type]
            key=KEY,
            sequence_by=SEQUENCE,
            sequence_ranks=RANKS,
            delete_marker=DELETE,
            snapshot_properties={"medlake.batch": "b2"},
        )
        assert {s.summary["medlake.batch"] for s in table.snapshots()[before:]} == {"b2"}
        return rows(table, UPSERT_COLUMNS if mode == "upsert" else SCD2_COLUMNS)

    for folder in ("one", "chunks", "files"):
        (tmp_path / folder).mkdir()
    expected = merged([changes], tmp_path / "one")
    assert merged(parts, tmp_path / "chunks") == expected
    assert merged(parts, tmp_path / "files", files=True) == expected
    if mode == "upsert":
        assert len(expected) == 3 * 6 + 1 + 2  # F2's new order and the row without a facility
    else:  # every version kept; F1's updated orders close their first version at minute 20
        assert len(expected) == 3 * 6 + 1 + len(changes)
        assert ("F1", "O0", "T1", "v0", "P", ts(0), "U", False, ts(0), ts(20), False, "b1") in expected


def test_a_merge_of_many_keys_reads_by_range_and_keeps_every_other_row(tmp_path: Path) -> None:
    """More keys than pyiceberg's IN limit: files are chosen by the key's range, rows by the key itself,
    so rows in the range whose key the batch does not have are written back unchanged."""
    initial = batch("b1", [("F1", f"O{n:04d}", "T1", "old", "P", 1, "U") for n in range(600)], arrived=1)
    changes = batch(
        "b2", [("F1", f"O{n:04d}", "T1", "new", "F", 2, "U") for n in range(0, 600, 2)], arrived=2
    )
    table = apply(make_table(tmp_path, "upsert", "bucket"), "upsert", initial)
    files_before = {task.file.file_path for task in table.scan().plan_files()}
    table = apply(table, "upsert", changes)
    assert rows(table, ["order_id", "value"]) == [
        (f"O{n:04d}", "new" if n % 2 == 0 else "old") for n in range(600)
    ]
    summary = table.current_snapshot().summary
    assert summary["deleted-data-files"] == str(len(files_before))  # every bucket holds a touched key
    assert (summary["deleted-records"], summary["added-records"]) == ("600", "600")


def _one_row_table(tmp_path: Path) -> Table:
    """An upsert table holding (F1, O1, T1) with value "1"."""
    return apply(
        make_table(tmp_path, "upsert"),
        "upsert",
        batch("b1", [("F1", "O1", "T1", "1", "P", 1, "U")], arrived=1),
    )


def test_a_key_in_two_chunks_is_refused(tmp_path: Path) -> None:
    table = _one_row_table(tmp_path)
    first = batch("b2", [("F1", "O1", "T1", "2", "P", 2, "U")], arrived=2)
    second = batch("b2", [("F1", "O1", "T1", "3", "P", 3, "U")], arrived=2)
    with pytest.raises(ValueError, match="a key is in two chunks of one merge"):
        merge_chunks(table, [lambda: first, lambda: second], mode="upsert", key=KEY, sequence_by=SEQUENCE)
    assert rows(table.refresh(), ["order_id", "value"]) == [("O1", "1")]


def test_chunks_sharing_a_key_prefix_merge_when_no_whole_key_is_in_two(tmp_path: Path) -> None:
    # Not what `plan_chunks` gives, but what `merge_chunks` allows: the check compares these keys in full.
    table = _one_row_table(tmp_path)
    first = batch("b2", [("F1", "O1", "T1", "2", "P", 2, "U")], arrived=2)
    second = batch(
        "b2", [("F1", "O1", "T2", "3", "P", 2, "U"), ("F1", None, "T1", "4", "P", 2, "U")], arrived=2
    )
    table = merge_chunks(table, [lambda: first, lambda: second], mode="upsert", key=KEY, sequence_by=SEQUENCE)
    assert rows(table, ["order_id", "test_code", "value"]) == [
        ("O1", "T1", "2"),
        ("O1", "T2", "3"),
        (None, "T1", "4"),
    ]


def _keys(orders: Sequence[str], facility: str | None = "F1") -> pl.DataFrame:
    count = len(orders)
    columns = {"facility_id": [facility] * count, "order_id": list(orders), "test_code": ["T1"] * count}
    return pl.DataFrame(columns, schema={name: pl.String for name in columns})


def _orders(start: int, stop: int, value: str, minute: int, facility: str = "F1") -> list[tuple]:
    return [(facility, f"O{n:04d}", "T1", value, "P", minute, "U") for n in range(start, stop)]


def record_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """(file path, the key columns read or "whole") for every data file read by merges from now on."""
    read: list[tuple[str, object]] = []

    def recording(*args, **kwargs):
        for data_file, reader in lake_files.planned_files(*args, **kwargs):

            def reading(columns=None, data_file=data_file, reader=reader):
                read.append((data_file.file_path, list(columns) if columns else "whole"))
                return reader(columns)

            yield data_file, reading

    monkeypatch.setattr("medlake_assets.silver.merge.planned_files", recording)
    return read


def test_key_bounds_skip_files_whose_range_the_new_keys_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders grow with time: after two batches, a batch of new orders and one late correction needs only
    the file holding the corrected order; the first batch's file is neither read nor replaced."""
    table = apply(make_table(tmp_path, "upsert"), "upsert", batch("b1", _orders(0, 100, "v1", 1), arrived=1))
    (first,) = [task.file for task in table.scan().plan_files()]
    table = apply(table, "upsert", batch("b2", _orders(100, 200, "v2", 2), arrived=2))
    files = {task.file.file_path: task.file for task in table.scan().plan_files()}
    assert first.file_path in files  # new orders left the first file alone
    (second,) = [data_file for path, data_file in files.items() if path != first.file_path]

    new = [f"O{n:04d}" for n in range(200, 250)]
    may_hold = key_bounds_check(table.schema(), _keys(["O0150", *new]), KEY)
    assert (may_hold(first), may_hold(second)) == (False, True)
    assert not key_bounds_check(table.schema(), _keys(new), KEY)(second)  # above every range
    assert not key_bounds_check(table.schema(), _keys(["O0150"], "F2"), KEY)(second)  # another facility

    read = record_reads(monkeypatch)
    correction = [("F1", "O0150", "T1", "v3", "F", 3, "U")]
    # Two facilities: the merge's scope names facilities only, so pyiceberg plans both of F1's files.
    new_orders = _orders(200, 250, "v3", 3, facility="F2")
    table = apply(table, "upsert", batch("b3", correction + new_orders, arrived=3))
    # The merge read only the file the correction is in: its keys, then all of it.
    assert read == [(second.file_path, KEY), (second.file_path, "whole")]
    kept = {task.file.file_path for task in table.scan().plan_files()}
    assert first.file_path in kept and second.file_path not in kept
    summary = table.current_snapshot().summary
    assert (summary["deleted-data-files"], summary["deleted-records"]) == ("1", "100")
    assert rows(table, ["order_id", "value"]) == [
        (f"O{n:04d}", "v1" if n < 100 else "v3" if n == 150 or n >= 200 else "v2") for n in range(250)
    ]


def test_key_bounds_never_skip_a_file_holding_a_key(tmp_path: Path) -> None:
    """Keys longer than the 16 characters string bounds keep, and a batch key with a null column: the file
    holding a key is always read."""
    long = [f"ORDER-FROM-A-LONG-SYSTEM-{n:05d}" for n in range(50)]
    rows_ = [("F1", order, "T1", "v", "P", 1, "U") for order in long]
    table = apply(make_table(tmp_path, "upsert", "none"), "upsert", batch("b1", rows_, arrived=1))
    (data_file,) = [task.file for task in table.scan().plan_files()]
    for order in long:
        assert key_bounds_check(table.schema(), _keys([order]), KEY)(data_file), order
    assert key_bounds_check(table.schema(), _keys([long[7]], None), KEY)(data_file)  # facility not used
    assert not key_bounds_check(table.schema(), _keys(["ORDER-FROM-B"]), KEY)(data_file)


def test_a_file_is_matched_against_the_batch_keys_within_its_bounds_only(tmp_path: Path) -> None:
    """A merge joins a file's rows with the batch keys its bounds may hold, other columns kept (the chunk),
    not with every key of the batch: a surge's batch holds millions."""
    table = apply(make_table(tmp_path, "upsert"), "upsert", batch("b1", _orders(0, 100, "v1", 1), arrived=1))
    table = apply(table, "upsert", batch("b2", _orders(100, 200, "v2", 2), arrived=2))
    order_field = table.schema().find_field("order_id").field_id
    first, second = sorted(
        (task.file for task in table.scan().plan_files()), key=lambda f: f.lower_bounds[order_field]
    )
    keys = _keys(["O0050", "O0150", "O0250"]).with_columns(pl.Series("__chunk", [0, 1, 2]))
    within = keys_within_bounds(table.schema(), keys.with_columns(pl.col("facility_id").set_sorted()), KEY)
    assert within(first).rows() == [("F1", "O0050", "T1", 0)]
    assert within(second).rows() == [("F1", "O0150", "T1", 1)]
    # A null in the first key column: it is not used, the order numbers still are.
    unbounded = keys_within_bounds(table.schema(), _keys(["O0050", "O0150"], None), KEY)
    assert unbounded(first).get_column("order_id").to_list() == ["O0050"]


def test_unchanged_rows_are_written_back_in_slices_of_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One change in a file of 20,000 rows: the other 19,999 are written back in slices of about
    `REST_SLICE_BYTES` (here every read of 8,192 rows is one), every row exactly once."""
    table = apply(
        make_table(tmp_path, "upsert", "none"), "upsert", batch("b1", _orders(0, 20_000, "v1", 1), arrived=1)
    )
    monkeypatch.setattr("medlake_assets.silver.merge.REST_SLICE_BYTES", 1)
    table = apply(table, "upsert", batch("b2", [("F1", "O0005", "T1", "v2", "F", 2, "U")], arrived=2))
    summary = table.current_snapshot().summary
    assert (summary["deleted-data-files"], summary["deleted-records"]) == ("1", "20000")
    # Three slices of the unchanged rows (8,192 + 8,192 + 3,615) and the changed key's file.
    assert (summary["added-data-files"], summary["added-records"]) == ("4", "20000")
    assert rows(table, ["order_id", "value"]) == sorted(
        (f"O{n:04d}", "v2" if n == 5 else "v1") for n in range(20_000)
    )


def _bed_updates(run: int, rng: random.Random) -> list[tuple]:
    """One update for 60 random beds of 12 facilities: every batch touches most buckets (bed census)."""
    beds = {(f"F{rng.randrange(12):02d}", f"B{rng.randrange(40):03d}") for _ in range(60)}
    return [(facility, bed, "T1", f"r{run}", "P", run, "U") for facility, bed in sorted(beds)]


def test_merges_touching_every_partition_keep_few_small_files(tmp_path: Path) -> None:
    """A batch of bed updates touches most buckets; each merge used to leave the unchanged rest of every
    file it replaced as a file of its own, so files grew by about one per bucket per merge and every merge
    read them all. Small files of a partition are now rewritten together: the count stays bounded, and
    the rows are those of one merge of every batch."""
    table = make_table(tmp_path, "upsert", "bucket")
    rng = random.Random(3)
    batches = [batch(f"b{run}", _bed_updates(run, rng), arrived=run) for run in range(12)]
    counts = []
    for changes in batches:
        table = apply(table, "upsert", changes)
        counts.append(len(table.inspect.files()))
    assert max(counts) <= 2 * 4, counts  # a rest and a merged file per bucket (4 buckets), at most
    expected = upsert(
        pl.DataFrame(schema=batches[0].schema), pl.concat(batches), key=KEY, sequence_by=SEQUENCE
    )
    assert rows(table, ["facility_id", "order_id", "value"]) == sorted(
        expected.select("facility_id", "order_id", "value").rows()
    )


@pytest.mark.parametrize("size", ["large", "small and alone"])
def test_a_file_without_batch_keys_is_read_by_its_keys_only_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    """A batch key within a file's bounds that the file does not hold: the merge reads the file's key
    columns, not its rows, and does not replace it (a small file neither, when no other small file shares
    its partition)."""
    table = apply(make_table(tmp_path, "upsert"), "upsert", batch("b1", _orders(0, 100, "v1", 1), arrived=1))
    (data_file,) = [task.file for task in table.scan().plan_files()]
    threshold = 0 if size == "large" else 10 * data_file.file_size_in_bytes
    monkeypatch.setattr("medlake_assets.silver.merge.COMPACT_BELOW_BYTES", threshold)
    read = record_reads(monkeypatch)
    gap = [("F1", "O0050x", "T1", "v2", "P", 2, "U")]  # sorts between O0050 and O0051
    table = apply(table, "upsert", batch("b2", gap, arrived=2))
    assert read == [(data_file.file_path, KEY)]
    assert data_file.file_path in {task.file.file_path for task in table.scan().plan_files()}
    assert table.current_snapshot().summary["total-data-files"] == "2"  # it and the new key's file
    assert len(rows(table, ["order_id"])) == 101
