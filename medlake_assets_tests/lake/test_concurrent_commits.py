"""Concurrent commits to one Iceberg table on the PostgreSQL catalog all land, each batch exactly once.

Several writers (threads here, each with its own catalog connection and `Table` object, as separate run
processes have) commit different batches to the same bronze, quarantine and silver tables at once.
pyiceberg 0.12 retries a commit that lost the race on fresh metadata (`commit.retry.num-retries`);
overwrites that a concurrent commit might overlap are redone by `replace_rows` / `merge_into`. A stale
`Table` object (loaded before another writer's commit) is the deterministic form of the same race.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo

from medlake_assets.ingest.bronze import (
    arrow_schema,
    bronze_table,
    commit_batch,
    quarantine_table,
    replace_rows,
)
from medlake_assets.lake.catalog import open_catalog
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.settings import load_settings
from medlake_assets.silver.merge import merge_into
from medlake_assets.silver.tables import ensure_table
from medlake_assets.spec import SourceSpec
from medlake_assets_tests.postgres import scratch_schema

DAY = date(2026, 11, 20)
WRITERS = 4
BATCHES_PER_WRITER = 3
ROWS_PER_BATCH = 50


@pytest.fixture
def catalog_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (first on the search path) for the Iceberg catalog, dropped afterwards."""
    with scratch_schema("medlake_commits") as url:
        yield url


@pytest.fixture
def open_writer(catalog_url: str, tmp_path: Path) -> Callable[[], Catalog]:
    """Opens a catalog connection of its own, as each run process does (local warehouse)."""
    settings = load_settings({"MEDLAKE_HOME": str(tmp_path), "MEDLAKE_CATALOG_URL": catalog_url})
    open_catalog(settings)  # namespaces first, as `medlake workers` does before starting the daemon
    return lambda: open_catalog(settings)


def _bronze_rows(table_schema: pa.Schema, spec: SourceSpec, batch_id: str, archives: list[str]) -> pa.Table:
    per_archive = ROWS_PER_BATCH // len(archives)
    records = [
        {
            **dict.fromkeys(spec.column_names(), "x"),
            "_archive": archive,
            "_member": "results.csv",
            "_record": record,
            "_facility": archive.split("/")[0],
            "_landing_day": DAY,
            "_ingested_at": datetime(2026, 11, 20, 9, tzinfo=UTC),
            "_batch": batch_id,
        }
        for archive in archives
        for record in range(1, per_archive + 1)
    ]
    return pa.Table.from_pylist(records, schema=table_schema)


def _batches() -> list[tuple[str, list[str]]]:
    """(batch id, archives) per writer and batch; archive keys of different batches interleave in order."""
    return [
        (f"batch-{writer}-{number}", [f"F{facility:02d}/{writer}-{number}.zip" for facility in range(5)])
        for writer in range(WRITERS)
        for number in range(BATCHES_PER_WRITER)
    ]


def _run_concurrently(jobs: list[Callable[[], None]]) -> None:
    """Start every job at once (a barrier) and re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    errors: list[BaseException] = []

    def run(job: Callable[[], None]) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as error:  # re-raised by the main thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _rows_per_batch(catalog: Catalog, identifier: str) -> Counter[str]:
    rows = catalog.load_table(identifier).scan(selected_fields=("_batch", "_archive", "_record")).to_arrow()
    keys = list(zip(rows["_archive"].to_pylist(), rows["_record"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a row is in the table twice"
    return Counter(rows["_batch"].to_pylist())


def _committed_batches(catalog: Catalog, identifier: str) -> Counter[str]:
    snapshots = catalog.load_table(identifier).snapshots()
    return Counter(s.summary[BATCH_PROPERTY] for s in snapshots if s.summary and BATCH_PROPERTY in s.summary)


@pytest.mark.parametrize("replace", [False, True], ids=["append", "replace"])
def test_concurrent_bronze_batches_all_land_once(
    open_writer: Callable[[], Catalog], sources: dict[str, SourceSpec], replace: bool
) -> None:
    spec = sources["lab_results"]
    bronze_table(open_writer(), spec)
    quarantine_table(open_writer(), spec)
    batches = _batches()

    def writer(mine: list[tuple[str, list[str]]]) -> Callable[[], None]:
        def commit_all() -> None:
            catalog = open_writer()
            for batch_id, archives in mine:
                for table in (bronze_table(catalog, spec), quarantine_table(catalog, spec)):
                    rows = _bronze_rows(arrow_schema(table), spec, batch_id, archives)
                    if table.name()[0] == "quarantine":
                        rows = rows.set_column(
                            rows.schema.get_field_index("stage"), "stage", pa.array(["bronze"] * len(rows))
                        )
                    commit_batch(table, rows, archives=archives, batch_id=batch_id, replace=replace)

        return commit_all

    _run_concurrently(
        [writer(batches[w * BATCHES_PER_WRITER : (w + 1) * BATCHES_PER_WRITER]) for w in range(WRITERS)]
    )
    catalog = open_writer()
    expected = Counter({batch_id: ROWS_PER_BATCH for batch_id, _ in batches})
    for identifier in ("bronze.lab_results", "quarantine.lab_results"):
        assert _rows_per_batch(catalog, identifier) == expected
        assert set(_committed_batches(catalog, identifier)) == set(expected)


def test_stale_table_commits_land_after_another_writers_commit(
    open_writer: Callable[[], Catalog], sources: dict[str, SourceSpec]
) -> None:
    """Two `Table` objects loaded at the same snapshot: the second commit is rebased, not lost."""
    spec = sources["lab_results"]
    first, second = bronze_table(open_writer(), spec), bronze_table(open_writer(), spec)
    assert first.metadata.current_snapshot_id == second.metadata.current_snapshot_id
    (a_id, a_archives), (b_id, b_archives), (c_id, c_archives) = _batches()[:3]
    commit_batch(first, _bronze_rows(arrow_schema(first), spec, a_id, a_archives), archives=a_archives,
                 batch_id=a_id, replace=False)  # fmt: skip
    # `second` still holds the metadata from before a's commit: an append and a replace from it.
    commit_batch(second, _bronze_rows(arrow_schema(second), spec, b_id, b_archives), archives=b_archives,
                 batch_id=b_id, replace=False)  # fmt: skip
    stale = bronze_table(open_writer(), spec)
    commit_batch(first, _bronze_rows(arrow_schema(first), spec, c_id, c_archives), archives=c_archives,
                 batch_id=c_id, replace=False)  # fmt: skip
    replace_rows(
        stale,
        _bronze_rows(arrow_schema(stale), spec, b_id, b_archives),
        EqualTo("_batch", b_id),
        {BATCH_PROPERTY: b_id},
    )
    counts = _rows_per_batch(open_writer(), "bronze.lab_results")
    assert counts == Counter({a_id: ROWS_PER_BATCH, b_id: ROWS_PER_BATCH, c_id: ROWS_PER_BATCH})


def test_concurrent_silver_upserts_and_table_creation(open_writer: Callable[[], Catalog]) -> None:
    """Writers race to create a partitioned silver table, then upsert overlapping keys at once."""
    schema = pa.schema(
        [
            ("facility_id", pa.string()),
            ("order_id", pa.string()),
            ("value", pa.int64()),
            ("seq", pa.int64()),
            ("_archive", pa.string()),
            ("_batch", pa.string()),
            ("_deleted", pa.bool_()),
        ]
    )
    facilities = [f"F{number:02d}" for number in range(3)]

    def changes(writer: int, number: int) -> pl.DataFrame:
        # Every writer updates the same keys (orders 0-9 of every facility) and adds keys of its own.
        orders = [f"O{order}" for order in range(10)] + [f"W{writer}-{number}-{order}" for order in range(5)]
        return pl.DataFrame(
            [
                {
                    "facility_id": facility,
                    "order_id": order,
                    "value": writer * 100 + number,
                    "seq": number * WRITERS + writer,
                    "_archive": f"{facility}/{writer}-{number}.zip",
                    "_batch": f"batch-{writer}-{number}",
                }
                for facility in facilities
                for order in orders
            ],
            schema=pl.from_arrow(schema.empty_table()).drop("_deleted").schema,
        )

    def writer(number: int) -> Callable[[], None]:
        def upsert_all() -> None:
            catalog = open_writer()
            table = ensure_table(catalog, "silver.concurrent", schema, ["facility_id"])
            for batch in range(BATCHES_PER_WRITER):
                table = merge_into(
                    table,
                    changes(number, batch),
                    mode="upsert",
                    key=["facility_id", "order_id"],
                    sequence_by=["seq"],
                    snapshot_properties={"medlake.silver_batches": f"batch-{number}-{batch}"},
                )

        return upsert_all

    _run_concurrently([writer(number) for number in range(WRITERS)])
    table = open_writer().load_table("silver.concurrent")
    assert [field.name for field in table.spec().fields] == ["facility_id_identitytransform"]
    rows = pl.from_arrow(table.scan().to_arrow())
    assert rows.select("facility_id", "order_id").is_duplicated().sum() == 0
    shared = rows.filter(pl.col("order_id").str.starts_with("O"))
    last_seq = (BATCHES_PER_WRITER - 1) * WRITERS + WRITERS - 1
    # The shared keys hold the highest sequence of all writers, whatever order the commits landed in.
    assert shared.height == 10 * len(facilities)
    assert shared.get_column("seq").unique().to_list() == [last_seq]
    own = rows.filter(pl.col("order_id").str.starts_with("W"))
    assert own.height == WRITERS * BATCHES_PER_WRITER * 5 * len(facilities)
    summaries = [s.summary.get("medlake.silver_batches") for s in table.snapshots() if s.summary]
    # An overwrite commits up to three snapshots (delete, rewrite, append), each with the properties.
    assert set(filter(None, summaries)) == {
        f"batch-{w}-{b}" for w in range(WRITERS) for b in range(BATCHES_PER_WRITER)
    }
