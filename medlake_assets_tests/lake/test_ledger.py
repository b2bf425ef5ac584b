"""The ledger on SQLite (always) and on PostgreSQL (when MEDLAKE_TEST_POSTGRES_URL names a database)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from medlake_assets.lake.ledger import (
    LOADED,
    PENDING,
    QUARANTINED,
    SQLITE_BUSY_TIMEOUT_MS,
    Batch,
    FileResult,
    LandedFile,
    Ledger,
    LedgerFile,
    files,
)
from medlake_assets_tests.postgres import scratch_schema

STORE = "file:///lake"
SOURCE = "lab_results"
DAY = date(2024, 3, 1)
NEXT_DAY = date(2024, 3, 2)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL without a ledger: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    with scratch_schema("medlake_test") as url:
        yield url


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger(ledger_url)
    yield opened
    opened.close()


def new_object(
    name: str,
    *,
    etag: str = "e1",
    size: int = 100,
    source: str | None = SOURCE,
    facility: str | None = "fac_a",
    day: date | None = DAY,
    store: str = STORE,
) -> LandedFile:
    folder = f"{day:%Y/%m/%d}" if day else "nodate"
    return LandedFile(
        store, f"landing/{source}/{folder}/{facility}/{name}", etag, size, source, facility, day
    )


def register_many(
    ledger: Ledger, count: int, *, day: date = DAY, size: int = 100, start: int = 0
) -> list[int]:
    """Register `count` objects and return their ids, in registration order."""
    objects = [new_object(f"f{number:04d}.zip", size=size, day=day) for number in range(start, start + count)]
    assert ledger.register(objects) == count
    return [row.id for row in ledger.day_files(SOURCE, day)][-count:]


def test_register_twice_inserts_once(ledger: Ledger) -> None:
    objects = [new_object("a.zip", size=10), new_object("b.zip", size=20), new_object("c.zip", size=30)]
    before = datetime.now(UTC)
    assert ledger.register(objects) == 3
    first = ledger.day_files(SOURCE, DAY)
    assert ledger.register(objects) == 0
    assert ledger.day_files(SOURCE, DAY) == first
    assert ledger.counts() == {PENDING: 3, LOADED: 0, QUARANTINED: 0}
    row = first[0]
    assert (row.store, row.key, row.etag, row.size) == (
        STORE,
        "landing/lab_results/2024/03/01/fac_a/a.zip",
        "e1",
        10,
    )
    assert (row.source, row.facility, row.landing_day, row.status, row.batch_id) == (
        SOURCE,
        "fac_a",
        DAY,
        PENDING,
        None,
    )
    assert (row.members, row.records, row.rejected_records, row.rule, row.reason, row.quarantine_key) == (
        None,
    ) * 6
    assert row.loaded_at is None
    assert row.first_seen_at == row.updated_at
    assert row.first_seen_at.tzinfo == UTC
    assert abs(row.first_seen_at - before) < timedelta(minutes=5)
    assert [r.id for r in first] == sorted(r.id for r in first)


def test_register_counts_duplicates_within_one_call_once(ledger: Ledger) -> None:
    assert ledger.register([new_object("a.zip"), new_object("a.zip"), new_object("b.zip")]) == 2
    assert ledger.register([]) == 0
    assert ledger.counts(SOURCE)[PENDING] == 2


def test_same_key_with_a_new_etag_is_a_new_row(ledger: Ledger) -> None:
    assert ledger.register([new_object("a.zip", etag="e1")]) == 1
    assert ledger.register([new_object("a.zip", etag="e1"), new_object("a.zip", etag="e2")]) == 1
    assert ledger.register([new_object("a.zip", etag="e1", store="s3://other")]) == 1
    rows = ledger.day_files(SOURCE, DAY)
    assert [(row.store, row.etag) for row in rows] == [(STORE, "e1"), (STORE, "e2"), ("s3://other", "e1")]


@pytest.mark.parametrize(("source", "day"), [(None, DAY), (SOURCE, None)])
def test_register_refuses_objects_no_source_owns(
    ledger: Ledger, source: str | None, day: date | None
) -> None:
    with pytest.raises(
        ValueError, match="has no source or landing day; register it with quarantine_unrouted"
    ):
        ledger.register([new_object("ok.zip"), new_object("x.zip", source=source, day=day)])
    assert ledger.counts() == {PENDING: 0, LOADED: 0, QUARANTINED: 0}


def test_known_keys_are_exactly_those_under_the_prefix(ledger: Ledger) -> None:
    keys = [
        "landing/lab/2024/03/01/a.zip",
        "landing/lab/2024/03/01/b.zip",
        "landing/lab/2024/03/010.zip",
        "landing/lab/2024/03/02/a.zip",
        "landing/LAB/2024/03/01/a.zip",
        "landing/lab-x/2024/03/01/a.zip",
        "landing/lab_/2024/03/01/a.zip",
        "landing/la%b/2024/03/01/a.zip",
    ]
    objects = [LandedFile(STORE, key, "e1", 1, SOURCE, "f", DAY) for key in keys]
    objects.append(LandedFile(STORE, keys[0], "e2", 1, SOURCE, "f", DAY))
    objects.append(LandedFile("s3://other", keys[1], "e1", 1, SOURCE, "f", DAY))
    assert ledger.register(objects) == 10
    assert ledger.known_keys(STORE, "landing/lab/2024/03/01/") == {
        ("landing/lab/2024/03/01/a.zip", "e1"),
        ("landing/lab/2024/03/01/a.zip", "e2"),
        ("landing/lab/2024/03/01/b.zip", "e1"),
    }
    assert {key for key, _ in ledger.known_keys(STORE, "landing/lab/2024/03/01")} == {
        "landing/lab/2024/03/01/a.zip",
        "landing/lab/2024/03/01/b.zip",
        "landing/lab/2024/03/010.zip",
    }
    assert ledger.known_keys(STORE, "landing/la%") == {("landing/la%b/2024/03/01/a.zip", "e1")}
    assert ledger.known_keys(STORE, "landing/lab_") == {("landing/lab_/2024/03/01/a.zip", "e1")}
    assert len(ledger.known_keys(STORE, "")) == 9
    assert ledger.known_keys("s3://other", "landing/") == {("landing/lab/2024/03/01/b.zip", "e1")}
    assert ledger.known_keys(STORE, "landing/zzz/") == set()


def test_claim_respects_max_archives_with_deterministic_ids(ledger: Ledger) -> None:
    ids = register_many(ledger, 7)
    assert ids == [1, 2, 3, 4, 5, 6, 7]  # a fresh table numbers from 1 on every backend
    batches = ledger.claim_batches(SOURCE, max_archives=3, max_bytes=10**9)
    assert batches == [
        Batch("lab_results-20240301-000000001-000000003", SOURCE, DAY, (1, 2, 3), 300),
        Batch("lab_results-20240301-000000004-000000006", SOURCE, DAY, (4, 5, 6), 300),
        Batch("lab_results-20240301-000000007-000000007", SOURCE, DAY, (7,), 100),
    ]
    assert ledger.claim_batches(SOURCE, max_archives=3, max_bytes=10**9) == []
    assert [row.id for row in ledger.batch_files("lab_results-20240301-000000004-000000006")] == [4, 5, 6]
    assert {row.status for row in ledger.day_files(SOURCE, DAY)} == {PENDING}


def test_claim_respects_max_bytes_and_lets_a_large_file_alone(ledger: Ledger) -> None:
    sizes = [40, 40, 40, 150, 10, 20]
    objects = [new_object(f"f{number}.zip", size=size) for number, size in enumerate(sizes)]
    assert ledger.register(objects) == 6
    batches = ledger.claim_batches(SOURCE, max_archives=100, max_bytes=100)
    assert [(batch.file_ids, batch.size) for batch in batches] == [
        ((1, 2), 80),
        ((3,), 40),
        ((4,), 150),
        ((5, 6), 30),
    ]


def test_claim_cuts_per_landing_day_and_per_source(ledger: Ledger) -> None:
    assert ledger.register([new_object("late.zip", day=NEXT_DAY)]) == 1  # id 1
    register_many(ledger, 2)  # ids 2, 3
    assert ledger.register([new_object("other.zip", source="adt_events")]) == 1  # id 4
    register_many(ledger, 1, day=NEXT_DAY, start=10)  # id 5
    batches = ledger.claim_batches(SOURCE, max_archives=10, max_bytes=10**9)
    assert [(batch.batch_id, batch.landing_day, batch.file_ids) for batch in batches] == [
        ("lab_results-20240301-000000002-000000003", DAY, (2, 3)),
        ("lab_results-20240302-000000001-000000005", NEXT_DAY, (1, 5)),
    ]
    assert ledger.claim_batches("adt_events", max_archives=10, max_bytes=10**9) == [
        Batch("adt_events-20240301-000000004-000000004", "adt_events", DAY, (4,), 100)
    ]


def test_batch_ids_do_not_depend_on_the_database(ledger_url: str, tmp_path: Path) -> None:
    claimed = []
    for url in [ledger_url, f"sqlite:///{tmp_path / 'second.db'}"]:
        ledger = Ledger(url)
        register_many(ledger, 5)
        claimed.append(
            [batch.batch_id for batch in ledger.claim_batches(SOURCE, max_archives=2, max_bytes=10**9)]
        )
        ledger.close()
    assert (
        claimed[0]
        == claimed[1]
        == [
            "lab_results-20240301-000000001-000000002",
            "lab_results-20240301-000000003-000000004",
            "lab_results-20240301-000000005-000000005",
        ]
    )


@pytest.mark.parametrize(("max_archives", "max_bytes"), [(0, 100), (10, 0)])
def test_claim_refuses_empty_limits(ledger: Ledger, max_archives: int, max_bytes: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ledger.claim_batches(SOURCE, max_archives=max_archives, max_bytes=max_bytes)


def run_together(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(index)` in `count` threads released at the same moment; re-raise any thread's error."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def target(index: int) -> None:
        try:
            barrier.wait()
            results[index] = work(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=target, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_claims_never_share_a_file(ledger: Ledger, ledger_url: str) -> None:
    ids = register_many(ledger, 60) + register_many(ledger, 40, day=NEXT_DAY)
    claimers = [Ledger(ledger_url) for _ in range(4)]
    try:
        claims = run_together(
            4, lambda index: claimers[index].claim_batches(SOURCE, max_archives=7, max_bytes=10**9)
        )
    finally:
        for claimer in claimers:
            claimer.close()
    batches = [batch for claim in claims for batch in claim]
    claimed = [file_id for batch in batches for file_id in batch.file_ids]
    assert sorted(claimed) == sorted(ids)  # every file once, none twice
    assert len({batch.batch_id for batch in batches}) == len(batches) == 9 + 6
    for batch in batches:
        assert [row.id for row in ledger.batch_files(batch.batch_id)] == list(batch.file_ids)


def test_concurrent_registers_insert_each_object_once(ledger: Ledger, ledger_url: str) -> None:
    objects = [new_object(f"f{number}.zip") for number in range(50)]
    writers = [Ledger(ledger_url) for _ in range(4)]
    try:
        new = run_together(
            4, lambda index: writers[index].register(objects[index * 5 :] + objects[: index * 5])
        )
    finally:
        for writer in writers:
            writer.close()
    assert sum(new) == 50
    assert ledger.counts() == {PENDING: 50, LOADED: 0, QUARANTINED: 0}


def loaded(file_id: int, records: int = 10) -> FileResult:
    return FileResult(
        file_id, members=2, records=records, rejected_records=1, rule="csv.bad_row", reason="1 rejected"
    )


def test_unfinished_batches_are_claimed_batches_with_a_pending_file(ledger: Ledger) -> None:
    register_many(ledger, 6)
    first, second = ledger.claim_batches(SOURCE, max_archives=3, max_bytes=10**9)
    register_many(ledger, 2, start=100)  # pending but unclaimed: not a batch yet
    assert ledger.unfinished_batches(SOURCE) == [first, second]
    ledger.mark_loaded([loaded(file_id) for file_id in first.file_ids])
    ledger.mark_loaded([loaded(4)])
    ledger.mark_quarantined([FileResult(5, rule="archive.bad_password", reason="wrong password")])
    assert ledger.unfinished_batches(SOURCE) == [second]  # all its files, 6 still pending
    assert ledger.unfinished_batches("adt_events") == []
    ledger.mark_loaded([loaded(6)])
    assert ledger.unfinished_batches(SOURCE) == []
    assert ledger.counts(SOURCE) == {PENDING: 2, LOADED: 5, QUARANTINED: 1}


def test_mark_loaded_records_the_result_and_is_idempotent(ledger: Ledger) -> None:
    register_many(ledger, 2)
    (batch,) = ledger.claim_batches(SOURCE, max_archives=10, max_bytes=10**9)
    results = [loaded(1, records=10), FileResult(2, members=1, records=0, rejected_records=0)]
    ledger.mark_loaded(results)
    once = ledger.batch_files(batch.batch_id)
    ledger.mark_loaded(results)
    assert ledger.batch_files(batch.batch_id) == once
    one, two = once
    assert (one.status, one.members, one.records, one.rejected_records, one.rule, one.reason) == (
        LOADED,
        2,
        10,
        1,
        "csv.bad_row",
        "1 rejected",
    )
    assert (two.status, two.members, two.records, two.rejected_records, two.rule) == (LOADED, 1, 0, 0, None)
    assert one.loaded_at is not None and one.loaded_at.tzinfo == UTC
    assert one.updated_at == one.loaded_at >= one.first_seen_at
    assert one.batch_id == batch.batch_id


def test_mark_quarantined_records_the_reason_and_is_idempotent(ledger: Ledger) -> None:
    register_many(ledger, 1)
    ledger.mark_loaded([loaded(1)])
    result = FileResult(
        1, members=0, rule="archive.bad_password", reason="wrong password", quarantine_key="q/a.zip"
    )
    ledger.mark_quarantined([result])
    once = ledger.file(1)
    ledger.mark_quarantined([result])
    assert ledger.file(1) == once
    assert (once.status, once.members, once.records, once.rule, once.reason, once.quarantine_key) == (
        QUARANTINED,
        0,
        None,
        "archive.bad_password",
        "wrong password",
        "q/a.zip",
    )
    assert once.loaded_at is None  # none of its rows are in the table any more
    ledger.mark_loaded([loaded(1, records=12)])  # a later reload that succeeds
    again = ledger.file(1)
    assert (again.status, again.records, again.quarantine_key) == (LOADED, 12, None)
    assert again.loaded_at is not None


def test_mark_with_an_unknown_file_changes_nothing(ledger: Ledger) -> None:
    register_many(ledger, 1)
    with pytest.raises(LookupError, match=r"no files with ids \[99\] in the ledger; nothing was changed"):
        ledger.mark_loaded([loaded(1), loaded(99)])
    assert ledger.file(1).status == PENDING
    with pytest.raises(LookupError, match=r"\[98, 99\]"):
        ledger.mark_quarantined([FileResult(99), FileResult(98)])
    with pytest.raises(LookupError, match="no file with id 99"):
        ledger.file(99)
    ledger.mark_loaded([])
    assert ledger.counts() == {PENDING: 1, LOADED: 0, QUARANTINED: 0}


def test_assign_batch_re_owns_a_days_files(ledger: Ledger) -> None:
    register_many(ledger, 4)
    register_many(ledger, 1, day=NEXT_DAY, start=50)
    ledger.claim_batches(SOURCE, max_archives=2, max_bytes=10**9)
    ledger.mark_loaded([loaded(1), loaded(2)])
    day = ledger.day_files(SOURCE, DAY)
    assert [row.id for row in day] == [1, 2, 3, 4]
    ledger.assign_batch([row.id for row in day], "backfill-1")
    ledger.assign_batch([row.id for row in day], "backfill-1")
    rows = ledger.batch_files("backfill-1")
    assert [(row.id, row.status) for row in rows] == [(1, LOADED), (2, LOADED), (3, PENDING), (4, PENDING)]
    assert ledger.batch_files("lab_results-20240301-000000001-000000002") == []
    assert [batch.batch_id for batch in ledger.unfinished_batches(SOURCE)] == [
        "backfill-1",
        "lab_results-20240302-000000005-000000005",
    ]
    with pytest.raises(LookupError, match=r"\[77\]"):
        ledger.assign_batch([3, 77], "backfill-2")
    assert ledger.file(3).batch_id == "backfill-1"


def test_day_files_are_one_source_and_day(ledger: Ledger) -> None:
    register_many(ledger, 2)
    register_many(ledger, 1, day=NEXT_DAY, start=10)
    ledger.register([new_object("adt.zip", source="adt_events")])
    assert [row.key for row in ledger.day_files(SOURCE, DAY)] == [
        "landing/lab_results/2024/03/01/fac_a/f0000.zip",
        "landing/lab_results/2024/03/01/fac_a/f0001.zip",
    ]
    assert [row.id for row in ledger.day_files(SOURCE, NEXT_DAY)] == [3]
    assert ledger.day_files(SOURCE, date(2024, 3, 3)) == []


def test_quarantine_unrouted_registers_objects_as_quarantined_once(ledger: Ledger) -> None:
    objects = [
        new_object("x.zip", source=None, facility=None, day=None),
        new_object("y.zip", source=SOURCE, day=None),  # its key's date was not a date
    ]
    key_for = "quarantine/{}".format
    assert ledger.quarantine_unrouted(objects, "landing.no_source", "matches no source", key_for) == 2
    assert ledger.quarantine_unrouted(objects, "landing.no_source", "matches no source", key_for) == 0
    rows = [ledger.file(1), ledger.file(2)]
    assert [(row.status, row.source, row.landing_day, row.batch_id) for row in rows] == [
        (QUARANTINED, None, None, None),
        (QUARANTINED, SOURCE, None, None),
    ]
    assert [(row.rule, row.reason, row.quarantine_key) for row in rows] == [
        ("landing.no_source", "matches no source", f"quarantine/{objects[0].key}"),
        ("landing.no_source", "matches no source", f"quarantine/{objects[1].key}"),
    ]
    assert ledger.counts() == {PENDING: 0, LOADED: 0, QUARANTINED: 2}
    assert ledger.claim_batches(SOURCE, max_archives=10, max_bytes=10**9) == []


def test_counts_per_source_and_overall(ledger: Ledger) -> None:
    register_many(ledger, 3)
    ledger.register([new_object("adt.zip", source="adt_events")])
    ledger.mark_loaded([loaded(1)])
    ledger.mark_quarantined([FileResult(2, rule="archive.corrupt", reason="not a zip")])
    assert ledger.counts(SOURCE) == {PENDING: 1, LOADED: 1, QUARANTINED: 1}
    assert ledger.counts("adt_events") == {PENDING: 1, LOADED: 0, QUARANTINED: 0}
    assert ledger.counts("nothing") == {PENDING: 0, LOADED: 0, QUARANTINED: 0}
    assert ledger.counts() == {PENDING: 2, LOADED: 1, QUARANTINED: 1}


def test_reopening_keeps_the_rows(ledger_url: str) -> None:
    first = Ledger(ledger_url)
    register_many(first, 2)
    first.close()
    second = Ledger(ledger_url)
    assert second.counts() == {PENDING: 2, LOADED: 0, QUARANTINED: 0}
    assert second.table_name == "medlake_files"
    assert second.url == ledger_url
    second.close()


def test_ledger_files_hold_every_column() -> None:
    """A `LedgerFile` is a whole `meta.files` row: a column added to the table needs a field."""
    assert {field.name for field in fields(LedgerFile)} == {column.name for column in files.columns}


def test_sqlite_ledger_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'catalog.db'}")
    with ledger.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_MS
    ledger.close()


def test_ledger_refuses_other_databases() -> None:
    with pytest.raises(ValueError, match="needs a SQLite or PostgreSQL database, not 'mysql'"):
        Ledger("mysql+pymysql://user@localhost/medlake")
