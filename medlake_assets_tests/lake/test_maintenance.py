"""Maintenance on real Iceberg tables: compaction keeps the rows and drops the file count, also under
concurrent appends; expiry keeps time travel inside the window; orphan cleanup removes only old
unreferenced files; restore brings back an earlier snapshot and is itself a point in history."""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.exceptions import ValidationException
from pyiceberg.expressions import EqualTo
from pyiceberg.io.pyarrow import ArrowScan

from medlake_assets.lake import Lake
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.maintenance import (
    CompactionPolicy,
    RestoreError,
    compact_table,
    expire_snapshots,
    maintain_table,
    plan_compaction,
    remove_orphan_files,
    restore_table,
    retention_for,
    rewrite_partition,
)
from medlake_assets.lake.settings import load_settings
from medlake_assets.serving.catalog_info import AsOfError
from medlake_assets.serving.read import read
from medlake_assets.serving.sql import connect
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec.models import RetentionSpec

SCHEMA = pa.schema(
    [
        ("facility", pa.string()),
        ("value", pa.float64()),
        ("resulted_on", pa.date32()),
        ("_record", pa.int64()),
        ("_landing_day", pa.date32()),
        ("_batch", pa.string()),
    ]
)
DAYS = [date(2026, 11, 20), date(2026, 11, 21)]
FACILITIES = ["F001", "F002", "F003", "F004", "F005"]
POLICY = CompactionPolicy(min_small_files=5)
RETENTION = RetentionSpec(snapshot_days=30, min_snapshots=1)


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")}))


def batch(seed: int, count: int, day: date, start: int, batch_id: str = "") -> pa.Table:
    """Seeded synthetic rows of one landing day, `_record` numbered from `start`."""
    rng = random.Random(seed)
    return pa.Table.from_pylist(
        [
            {
                "facility": rng.choice(FACILITIES),
                "value": round(rng.uniform(0, 20), 2),
                "resulted_on": day - timedelta(days=rng.randrange(40)),
                "_record": start + ordinal,
                "_landing_day": day,
                "_batch": batch_id or f"b{seed}",
            }
            for ordinal in range(count)
        ],
        schema=SCHEMA,
    )


def rows_of(table_or_rows) -> list[dict]:
    rows = table_or_rows if isinstance(table_or_rows, pa.Table) else table_or_rows.scan().to_arrow()
    return sorted(rows.select(SCHEMA.names).to_pylist(), key=lambda row: row["_record"])


def file_count(table) -> int:
    return len(table.refresh().inspect.files())


def files_per_day(table) -> dict[date, int]:
    """Data files per landing day of a table partitioned by `_landing_day` alone."""
    days = [next(iter(f["partition"].values())) for f in table.inspect.files().to_pylist()]
    return {day: days.count(day) for day in sorted(set(days))}


def snapshot_ids(table) -> list[int]:
    return [snapshot.snapshot_id for snapshot in table.snapshots()]


def wait_past(timestamp_ms: int) -> None:
    while time.time() * 1000 <= timestamp_ms + 1:
        time.sleep(0.002)


def small_files_table(lake: Lake, partition_by: list[str], name: str = "bronze.visits"):
    """Six appends to the first landing day and two to the second: many small files in some partitions."""
    table = ensure_table(lake.catalog, name, SCHEMA, partition_by)
    record = 0
    for seed in range(6):
        table.append(batch(seed, 40, DAYS[0], record))
        record += 40
    for seed in range(6, 8):
        table.append(batch(seed, 40, DAYS[1], record))
        record += 40
    return lake.catalog.load_table(name)


@pytest.mark.parametrize(
    ("partition_by", "compacted_partitions"),
    [
        (["_landing_day"], 1),  # the second day has two files only: left alone
        (["bucket(2, facility)"], 2),  # each bucket got a file from each of the 8 appends
        (["month(resulted_on)"], 2),
        ([], 1),
    ],
)
def test_compaction_keeps_rows_and_drops_files(lake, partition_by, compacted_partitions):
    table = small_files_table(lake, partition_by)
    before_rows, before_files = rows_of(table), file_count(table)
    before_snapshot = table.current_snapshot().snapshot_id
    folders = {task.file.file_path.rsplit("/", 1)[0] for task in table.scan().plan_files()}

    def rows_per_day(table) -> dict[date, int]:
        return {day: len(table.scan(row_filter=EqualTo("_landing_day", day)).to_arrow()) for day in DAYS}

    per_day = rows_per_day(table)

    result = compact_table(table, POLICY)

    table = lake.catalog.load_table("bronze.visits")
    assert rows_of(table) == before_rows
    assert result.partitions_compacted == compacted_partitions
    assert result.conflicts == 0
    assert result.files_before == before_files
    assert result.files_after == file_count(table) < before_files
    assert result.files_after == before_files - result.files_rewritten + result.files_written
    assert plan_compaction(table, POLICY) == []
    assert table.current_snapshot().summary["medlake.maintenance"] == "compaction"
    # The snapshot before compaction still reads the same rows (time travel is untouched).
    assert rows_of(table.scan(snapshot_id=before_snapshot).to_arrow()) == before_rows
    # A compacted file lies in its partition's folder, and carries its partition and column bounds: a
    # filtered scan (which prunes by them) finds the same rows.
    written = [task.file for task in table.scan().plan_files() if "-compacted" in task.file.file_path]
    assert len(written) == result.files_written >= compacted_partitions
    assert {data_file.file_path.rsplit("/", 1)[0] for data_file in written} <= folders
    assert rows_per_day(table) == per_day


def test_a_bin_read_short_fails_the_rewrite_and_the_table_keeps_its_files(lake, monkeypatch):
    table = small_files_table(lake, ["_landing_day"])
    before_rows, before_files = rows_of(table), file_count(table)
    # Files whose rows cannot be read (here: none come back) are never deleted as if compacted.
    monkeypatch.setattr(ArrowScan, "to_record_batches", lambda self, tasks: iter(()))
    with pytest.raises(ValueError, match="read 0 rows from files holding"):
        compact_table(table, POLICY)
    monkeypatch.undo()
    table = lake.catalog.load_table("bronze.visits")
    assert (rows_of(table), file_count(table)) == (before_rows, before_files)


def test_compaction_of_identity_partition_leaves_other_partition_files(lake):
    table = small_files_table(lake, ["_landing_day"])
    compact_table(table, POLICY)
    table = lake.catalog.load_table("bronze.visits")
    assert files_per_day(table) == {DAYS[0]: 1, DAYS[1]: 2}


def test_dry_run_plans_without_writing(lake):
    table = small_files_table(lake, ["_landing_day"])
    snapshot = table.current_snapshot().snapshot_id
    result = compact_table(table, POLICY, dry_run=True)
    assert (result.partitions_compacted, result.files_rewritten) == (1, 6)
    assert lake.catalog.load_table("bronze.visits").current_snapshot().snapshot_id == snapshot


def test_concurrent_append_to_the_partition_fails_the_rewrite_and_loses_nothing(lake):
    table = small_files_table(lake, ["_landing_day"])
    (planned,) = plan_compaction(table, POLICY)
    # Another writer appends to the same landing day after the plan, before the rewrite commits.
    late = batch(99, 25, DAYS[0], 10_000, "late")
    lake.catalog.load_table("bronze.visits").append(late)
    expected = sorted(rows_of(table) + rows_of(late), key=lambda row: row["_record"])

    with pytest.raises(ValidationException):
        rewrite_partition(table, planned, POLICY)

    fresh = lake.catalog.load_table("bronze.visits")
    assert rows_of(fresh) == expected
    # The files written for the failed attempt were deleted again: nothing unreferenced is left.
    assert remove_orphan_files(fresh, min_age=timedelta(0), dry_run=True).orphans == []
    # The next run compacts the partition, the late file included.
    result = compact_table(fresh, POLICY)
    assert (result.partitions_compacted, result.files_rewritten) == (1, 7)
    assert rows_of(lake.catalog.load_table("bronze.visits")) == expected


def test_concurrent_append_to_another_partition_does_not_conflict(lake):
    table = small_files_table(lake, ["_landing_day"])
    (planned,) = plan_compaction(table, POLICY)
    other = batch(98, 25, DAYS[1], 20_000, "other")
    lake.catalog.load_table("bronze.visits").append(other)
    expected = sorted(rows_of(table) + rows_of(other), key=lambda row: row["_record"])

    rewrite_partition(table, planned, POLICY)

    fresh = lake.catalog.load_table("bronze.visits")
    assert rows_of(fresh) == expected
    assert files_per_day(fresh)[DAYS[0]] == 1


@pytest.mark.parametrize(("attempts", "compacted", "conflicts"), [(3, 1, 0), (1, 0, 1)])
def test_compact_table_replans_after_a_conflict(lake, attempts, compacted, conflicts):
    stale = small_files_table(lake, ["_landing_day"])
    late = batch(97, 25, DAYS[0], 30_000, "late")
    lake.catalog.load_table("bronze.visits").append(late)
    expected = sorted(rows_of(stale) + rows_of(late), key=lambda row: row["_record"])

    # Planned from the stale object: the first commit conflicts, the retry plans from the new state.
    result = compact_table(stale, POLICY, attempts=attempts)

    assert (result.partitions_compacted, result.conflicts) == (compacted, conflicts)
    assert rows_of(lake.catalog.load_table("bronze.visits")) == expected


def history_table(lake: Lake):
    """Four commits, each a moment apart: append A, overwrite everything with B, append C, append D.
    Returns the table, each snapshot's id and rows, and a moment between each pair of commits."""
    table = ensure_table(lake.catalog, "silver.labs", SCHEMA, ["_landing_day"])
    steps = [
        lambda t: t.append(batch(1, 30, DAYS[0], 0), snapshot_properties={BATCH_PROPERTY: "b1"}),
        lambda t: t.overwrite(batch(2, 20, DAYS[0], 100), snapshot_properties={BATCH_PROPERTY: "b2"}),
        lambda t: t.append(batch(3, 10, DAYS[1], 200), snapshot_properties={BATCH_PROPERTY: "b3"}),
        lambda t: t.append(batch(4, 10, DAYS[1], 300), snapshot_properties={BATCH_PROPERTY: "b4"}),
    ]
    snapshots, between = [], []
    for step in steps:
        step(table)
        snapshot = table.current_snapshot()
        snapshots.append((snapshot.snapshot_id, rows_of(table)))
        wait_past(snapshot.timestamp_ms)
        between.append(datetime.fromtimestamp(time.time(), UTC))
        wait_past(int(time.time() * 1000))
    return lake.catalog.load_table("silver.labs"), snapshots, between


def test_expiry_keeps_time_travel_inside_the_window(lake):
    table, snapshots, between = history_table(lake)
    # The window opens between the second and the third commit: the first snapshot is outside it, the
    # second was current when it opened.
    window_opens = between[1]
    now = window_opens + timedelta(days=RETENTION.snapshot_days)

    ids = snapshot_ids(table)
    opened_with = ids.index(snapshots[1][0])

    result = expire_snapshots(table, RETENTION, now=now)

    assert result.snapshots_before == len(ids) == 5, "the overwrite is a delete and an append snapshot"
    assert result.expired == ids[:opened_with]
    table = lake.catalog.load_table("silver.labs")
    assert snapshot_ids(table) == ids[opened_with:]
    for snapshot_id, rows in snapshots[1:]:
        assert rows_of(read("silver.labs", as_of=snapshot_id, lake=lake).arrow) == rows
    for moment, (_, rows) in zip(between[1:], snapshots[1:], strict=True):
        assert rows_of(read("silver.labs", as_of=moment, lake=lake).arrow) == rows
    # The window's first moment, through DuckDB's own Iceberg reader as well.
    con = connect(lake, as_of=window_opens)
    assert con.execute("SELECT count(*) FROM silver.labs").fetchone()[0] == len(snapshots[1][1])
    with pytest.raises(AsOfError, match="no table in the lake has snapshot"):
        read("silver.labs", as_of=snapshots[0][0], lake=lake)
    # A time before the window: an error, not an empty table (the table had rows then).
    with pytest.raises(AsOfError, match="silver.labs keeps history from .* older snapshots were expired"):
        read("silver.labs", as_of=between[0], lake=lake)
    with pytest.raises(AsOfError, match="older snapshots were expired"):
        connect(lake, as_of=between[0])


def test_expiry_keeps_min_snapshots_and_the_current_one(lake):
    table, snapshots, between = history_table(lake)
    far_future = between[-1] + timedelta(days=400)
    assert (
        expire_snapshots(table, RetentionSpec(snapshot_days=1, min_snapshots=10), now=far_future).expired
        == []
    )
    ids = snapshot_ids(table)
    result = expire_snapshots(table, RetentionSpec(snapshot_days=1, min_snapshots=0), now=far_future)
    assert result.expired == ids[:-1]
    table = lake.catalog.load_table("silver.labs")
    assert snapshot_ids(table) == [snapshots[3][0]]
    assert rows_of(table) == snapshots[3][1]


def test_expiry_then_orphan_cleanup_removes_only_unreachable_files(lake):
    table, snapshots, between = history_table(lake)
    first_files = {f["file_path"] for f in table.inspect.files(snapshot_id=snapshots[0][0]).to_pylist()}
    now = between[1] + timedelta(days=RETENTION.snapshot_days)
    kept_reports = remove_orphan_files(table, now=now + timedelta(days=10))
    assert kept_reports.orphans == [], "before expiry every file is reachable"

    expire_snapshots(table, RETENTION, now=now)
    result = remove_orphan_files(table, now=now + timedelta(days=10))

    # The first append's data file (only that snapshot had it), its manifest list and manifests.
    location = table.location().rstrip("/") + "/"
    removed = {location + key for key in result.orphans}
    assert first_files <= removed
    assert all(not os.path.exists(path.removeprefix("file://")) for path in removed)
    table = lake.catalog.load_table("silver.labs")
    assert rows_of(table) == snapshots[3][1]
    for snapshot_id, rows in snapshots[1:]:
        assert rows_of(read("silver.labs", as_of=snapshot_id, lake=lake).arrow) == rows


def plant(path: str, age: timedelta) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"PAR1 not referenced by any snapshot")
    moment = time.time() - age.total_seconds()
    os.utime(path, (moment, moment))


def test_orphan_cleanup_removes_only_old_unreferenced_files(lake):
    table = small_files_table(lake, ["_landing_day"])
    expected = rows_of(table)
    root = table.location().removeprefix("file://")
    old = f"{root}/data/_landing_day=2026-11-20/00000-0-crashed-writer.parquet"
    fresh = f"{root}/data/_landing_day=2026-11-20/00000-0-in-flight.parquet"
    old_metadata = f"{root}/metadata/00099-abandoned.metadata.json"
    plant(old, timedelta(days=10))
    plant(fresh, timedelta(minutes=5))
    plant(old_metadata, timedelta(days=4))

    dry = remove_orphan_files(table, dry_run=True)
    assert sorted(dry.orphans) == [
        "data/_landing_day=2026-11-20/00000-0-crashed-writer.parquet",
        "metadata/00099-abandoned.metadata.json",
    ]
    assert os.path.exists(old)

    result = remove_orphan_files(table)

    assert sorted(result.orphans) == sorted(dry.orphans)
    assert result.kept_young == 1
    assert not os.path.exists(old) and not os.path.exists(old_metadata)
    assert os.path.exists(fresh)
    table = lake.catalog.load_table("bronze.visits")
    assert rows_of(table) == expected
    assert all(
        os.path.exists(path.removeprefix("file://"))
        for path in table.inspect.files()["file_path"].to_pylist()
    )


@pytest.mark.s3
def test_orphan_cleanup_on_s3(tmp_path, s3_endpoint, s3_bucket):
    from medlake_assets_tests.s3_endpoint import s3_client

    settings = load_settings(
        {
            "MEDLAKE_HOME": str(tmp_path / "home"),
            "MEDLAKE_STORE_URL": f"s3://{s3_bucket}/medlake",
            "MEDLAKE_S3_ENDPOINT_URL": s3_endpoint,
        }
    )
    lake = Lake(settings)
    table = small_files_table(lake, ["_landing_day"])
    compact_table(table, POLICY)
    table = lake.catalog.load_table("bronze.visits")
    expected = rows_of(table)
    location = table.location().rstrip("/")
    prefix = location.removeprefix(f"s3://{s3_bucket}/")
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}/data/orphan.parquet", Body=b"not referenced")

    young = remove_orphan_files(table, s3_endpoint_url=s3_endpoint)
    assert young.orphans == [] and young.kept_young == 1

    # Ten days on: the planted file is old enough; the compacted-away small files stay (time travel).
    result = remove_orphan_files(
        table, s3_endpoint_url=s3_endpoint, now=datetime.now(UTC) + timedelta(days=10)
    )
    assert result.orphans == ["data/orphan.parquet"]
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/data/orphan.parquet" not in keys
    assert rows_of(lake.catalog.load_table("bronze.visits")) == expected


def test_restore_to_a_snapshot_and_back(lake):
    table, snapshots, between = history_table(lake)
    ids = snapshot_ids(table)

    result = restore_table(table, snapshots[0][0])

    assert (result.from_snapshot_id, result.to_snapshot_id) == (snapshots[3][0], snapshots[0][0])
    assert result.undone_batches == ["b2", "b3", "b4"]
    assert result.seconds > 0
    table = lake.catalog.load_table("silver.labs")
    assert rows_of(table) == snapshots[0][1]
    assert snapshot_ids(table) == ids, "a restore moves the current pointer; it writes no snapshot"
    # The restore is a point in history: just before it the lake still reads the pre-restore rows.
    restored_at = datetime.fromtimestamp(table.history()[-1].timestamp_ms / 1000, UTC)
    assert rows_of(read("silver.labs", as_of=between[3], lake=lake).arrow) == snapshots[3][1]
    assert rows_of(read("silver.labs", as_of=restored_at, lake=lake).arrow) == snapshots[0][1]
    # A restore can be undone: any retained snapshot is a target.
    restore_table(table, snapshots[3][0])
    assert rows_of(lake.catalog.load_table("silver.labs")) == snapshots[3][1]


def test_restore_to_a_moment(lake):
    table, snapshots, between = history_table(lake)
    result = restore_table(table, between[1])
    assert result.to_snapshot_id == snapshots[1][0]
    assert rows_of(lake.catalog.load_table("silver.labs")) == snapshots[1][1]
    with pytest.raises(RestoreError, match="has no snapshot at or before"):
        restore_table(table, datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(RestoreError, match="has no snapshot 12345"):
        restore_table(table, 12345)


def test_retention_comes_from_the_source_spec(sources):
    custom = sources["lab_results"].model_copy(
        update={"retention": RetentionSpec(snapshot_days=7, min_snapshots=2)}
    )
    specs = {**sources, "lab_results": custom}
    for namespace in ("bronze", "silver", "quarantine"):
        assert retention_for(f"{namespace}.lab_results", specs) == RetentionSpec(
            snapshot_days=7, min_snapshots=2
        )
    assert retention_for("gold.bed_availability", specs) == RetentionSpec()
    assert retention_for("silver.encounters", specs) == RetentionSpec()


def test_maintain_table_compacts_expires_and_cleans(lake):
    table = small_files_table(lake, ["_landing_day"])
    expected = rows_of(table)
    last_commit = datetime.fromtimestamp(table.current_snapshot().timestamp_ms / 1000, UTC)
    # Run as if 40 days had passed: the appends are out of the 30-day window, compaction is the newest.
    now = last_commit + timedelta(days=40)
    result = maintain_table(table, retention=RETENTION, policy=POLICY, now=now)
    assert result.compaction.partitions_compacted == 1
    # The 8 appends and the compaction are all older than the window; the compaction stays (current).
    assert result.expiry.snapshots_before == 9
    assert len(result.expiry.expired) == 8
    assert result.orphans.orphans, "the compacted-away small files and expired manifests are removed"
    assert all(key.startswith(("data/", "metadata/")) for key in result.orphans.orphans)
    table = lake.catalog.load_table("bronze.visits")
    assert rows_of(table) == expected
    assert len(table.inspect.files()) == 3
    assert rows_of(table.scan(row_filter=EqualTo("_landing_day", DAYS[1].isoformat())).to_arrow()) == [
        row for row in expected if row["_landing_day"] == DAYS[1]
    ]
