"""Silver in chunks: a run cut into many small chunks gives exactly what one chunk gives (tables, rejects,
quality counts, held facilities), and the chunks never split a key.

Two lakes get the same landing day (generated feeds of every source plus lab files that hold a facility
back), loaded in two bronze batches per source with a silver run after each (the second merges into rows
the first wrote). One lake refines with the default chunk size (the day in one chunk), the other with a
few dozen rows per chunk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from pyiceberg.expressions import AlwaysTrue

from medlake_assets.ingest.batch import load_batch
from medlake_assets.ingest.bronze import bronze_table
from medlake_assets.ingest.landing import day_prefix, register_landed
from medlake_assets.lake import Lake
from medlake_assets.lake.ledger import batch_id_for
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets.silver.chunks import _parts_by_chunk, chunk_columns, spill_chunks
from medlake_assets.silver.encounters_load import load_encounters
from medlake_assets.silver.load import batch_filter, consumer, load_silver
from medlake_assets.silver.merge import ChunkFinder, plan_chunks
from medlake_assets_tests.ingest.archive_builders import gzip_bytes
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 3, "archives": 24, "seed": 5, "bad_rate": 0.0, "day": DAY, "size_scale": 0.01}
SMALL_CHUNKS = 40
LAB_HEADER = (
    "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
    "result_status,result_ts\n"
)


def lab_rows(facility: str, orders: range, *, bad_every: int = 0, status: str = "F", hour: int = 10) -> str:
    """One row per order (test 2345-7); every `bad_every`-th has a test code the regex rule rejects, and
    order 7 a timestamp that fails its cast."""
    rows = []
    for n in orders:
        code = "NOT-A-LOINC" if bad_every and n % bad_every == 0 else "2345-7"
        when = "not-a-time" if n == 7 else f"2026-11-20T{hour:02d}:{n % 60:02d}:00Z"
        fields = [facility, f"P{n}", f"O{n:04d}", code, "Glucose", "5.1", "mmol/L", "3.9-5.5", "N", status]
        rows.append(",".join([*fields, when]))
    return LAB_HEADER + "\n".join(rows) + "\n"


def land(home: Path) -> None:
    write_feeds(home, **GENERATION)
    store = LocalObjectStore(home)
    prefix = f"landing/lab_results/{DAY:%Y/%m/%d}"
    # F8: 30 of 120 rows fail a rule (held back); F9: 150 orders preliminary, then final in a later file.
    store.put(f"{prefix}/F8/f8.csv.gz", gzip_bytes(lab_rows("F8", range(120), bad_every=4).encode()))
    store.put(f"{prefix}/F9/f9a.csv.gz", gzip_bytes(lab_rows("F9", range(150), status="P").encode()))
    store.put(f"{prefix}/F9/f9b.csv.gz", gzip_bytes(lab_rows("F9", range(0, 150, 2), hour=11).encode()))


def refine(home: Path, chunk_rows: int | None) -> tuple[Lake, list[dict]]:
    """Two bronze batches per source, each followed by silver (and encounters) with `chunk_rows`."""
    lake = open_lake(local_settings(home))
    specs = list(lake.sources.values())
    register_landed(lake.store, lake.ledger, specs, [day_prefix(spec.name, DAY) for spec in specs])
    size = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    results = []
    for spec in specs:
        pending = sorted(row.id for row in lake.ledger.day_files(spec.name, DAY) if row.status == "pending")
        for half in (pending[::2], pending[1::2]):
            batch_id = batch_id_for(spec.name, DAY, half)
            lake.ledger.assign_batch(half, batch_id)
            load_batch(lake, spec, batch_id, lake.ledger.batch_files(batch_id))
            result = load_silver(lake, spec, DAY, **size)
            results.append(
                {
                    "source": spec.name,
                    "rows_in": result.rows_in,
                    "rejected": result.rejected,
                    "rules": dict(result.rules),
                    "warnings": dict(result.warnings),
                    "held": dict(result.held),
                    "rows_written": result.rows_written,
                    "published_facilities": result.published_facilities,
                }
            )
            if spec.name == "adt_events":
                timings = dict.fromkeys(("seconds", "read_seconds", "merge_seconds"))
                results.append(load_encounters(lake, spec, DAY, **size) | timings)
    return lake, results


def contents(lake: Lake) -> dict[str, list[tuple]]:
    con = connect(lake)
    tables = [f"silver.{name}" for name in ("adt_events", "bed_census", "lab_results", "patient_documents")]
    tables += ["silver.encounters"] + [f"quarantine.{name}" for name in ("adt_events", "lab_results")]
    # Load times differ between the lakes, and so do the encounters' fold keys that hold them.
    columns = "COLUMNS(c -> c <> '_ingested_at' AND NOT regexp_matches(c, '^_fold_.*_at$'))"
    found = {name: con.execute(f"SELECT {columns} FROM {name} ORDER BY ALL").fetchall() for name in tables}
    found["meta.held"] = con.execute(
        "SELECT source, batch_id, facility, status, rows, rejected, error_rate, rules FROM meta.held "
        "ORDER BY ALL"
    ).fetchall()
    found["meta.quality"] = con.execute(
        "SELECT source, stage, batch_id, facility, rule, severity, rows FROM meta.quality ORDER BY ALL"
    ).fetchall()
    return found


@pytest.fixture
def two_lakes(tmp_path, archive_password):
    land(tmp_path / "one")
    shutil.copytree(tmp_path / "one", tmp_path / "small")
    return refine(tmp_path / "one", None), refine(tmp_path / "small", SMALL_CHUNKS)


def test_small_chunks_give_what_one_chunk_gives(two_lakes):
    (whole, whole_reports), (chunked, chunked_reports) = two_lakes
    assert chunked_reports == whole_reports
    expected = contents(whole)
    assert contents(chunked) == expected
    # The day is not trivial: F8 held alone, rejects from a rule and from a cast, F9's orders upserted to F.
    assert [(row[2], row[3]) for row in expected["meta.held"]] == [("F8", "held")]
    rules = {row[-3] for row in expected["quarantine.lab_results"]}
    assert {"check.regex:test_code", "cast.timestamp"} <= rules
    f9 = [row for row in expected["silver.lab_results"] if row[0] == "F9"]
    assert len(f9) == 149 and sum(row[9] == "F" for row in f9) == 75  # O0007 fails its cast; 75 even orders
    assert expected["silver.encounters"], "visits were derived"


def test_chunks_hold_whole_keys_and_a_large_facility_is_split(tmp_path, archive_password):
    home = tmp_path / "home"
    land(home)
    lake, _ = refine(home, SMALL_CHUNKS)
    spec = lake.sources["lab_results"]
    assert chunk_columns(spec) == ["facility_id", "order_id"]
    (tmp_path / "spill").mkdir()
    chunks = spill_chunks(
        bronze_table(lake.catalog, spec), AlwaysTrue(), spec, tmp_path / "spill", SMALL_CHUNKS
    )
    frames = [
        pl.read_parquet(path).with_columns(pl.lit(n).alias("chunk")) for n, path in enumerate(chunks.paths)
    ]
    rows = pl.concat(frames)
    assert rows.height == chunks.rows == bronze_table(lake.catalog, spec).scan().count()
    # A key (facility, order) is never in two chunks; F9 (225 rows) is cut into several chunks of its own.
    assert (
        rows.group_by("facility_id", "order_id").agg(pl.col("chunk").n_unique()).get_column("chunk").max()
        == 1
    )
    f9_chunks = rows.filter(pl.col("facility_id") == "F9").get_column("chunk").unique()
    assert f9_chunks.len() >= 225 // SMALL_CHUNKS
    assert rows.filter(pl.col("chunk").is_in(f9_chunks.implode())).get_column(
        "facility_id"
    ).unique().to_list() == ["F9"]
    # About SMALL_CHUNKS rows each: a chunk closes after the group that crosses the size (never split).
    largest_group = rows.group_by("facility_id", "order_id").len().get_column("len").max()
    assert rows.group_by("chunk").len().get_column("len").max() < SMALL_CHUNKS + largest_group


def test_a_batch_is_cut_into_its_chunks_each_in_batch_order():
    batch = pa.record_batch({"key": list(range(8))})
    parts = _parts_by_chunk(batch, np.array([2, 0, 2, 1, 0, 2, 1, 0]))
    assert [(number, part.column("key").to_pylist()) for number, part in parts] == [
        (0, [1, 4, 7]),
        (1, [3, 6]),
        (2, [0, 2, 5]),
    ]
    [(number, whole)] = _parts_by_chunk(batch, np.full(8, 3))
    assert number == 3 and whole.column("key").to_pylist() == list(range(8))


def test_a_run_plans_only_the_files_of_its_batches(tmp_path, archive_password):
    """Silver reads bronze, and encounters read silver events, by batch id; a day's later run must not read
    the files of the day's earlier batches, or every run reads the day so far."""
    home = tmp_path / "home"
    land(home)
    lake, _ = refine(home, None)
    for spec in lake.sources.values():
        tables = [bronze_table(lake.catalog, spec)]
        if spec.write.mode == "append":
            tables.append(lake.catalog.load_table(consumer(spec.name)))
        batches = sorted(lake.ledger.processed_batches(consumer(spec.name), DAY))
        assert len(batches) == 2, spec.name
        for table in tables:
            planned = [
                {
                    task.file.file_path
                    for task in table.scan(row_filter=batch_filter(DAY, [batch], [])).plan_files()
                }
                for batch in batches
            ]
            every = {task.file.file_path for task in table.scan().plan_files()}
            assert planned[0] and planned[1] and not planned[0] & planned[1], table.name()
            assert planned[0] | planned[1] == every, table.name()


def test_chunk_finder_places_rows_as_a_join_with_the_plan_would():
    """Whole facilities, a large one cut by order ranges, and null keys: each row lands in the chunk the
    plan gave its (facility, order); a row the plan does not know is refused."""
    rows = pl.DataFrame(
        {
            "facility_id": ["F1"] * 3 + ["F2"] * 40 + ["F3"] * 2 + [None, "F3"],
            "order_id": ["O1", "O2", "O1"] + [f"O{n:03d}" for n in range(40)] + ["O9", "O8", "O1", None],
        }
    ).sample(fraction=1.0, shuffle=True, seed=3)
    columns = ["facility_id", "order_id"]
    groups = rows.group_by(columns).agg(pl.len().alias("rows"))
    plan = plan_chunks(groups, columns, max_rows=10)
    finder = ChunkFinder("silver.lab_results", plan, columns)
    found = np.concatenate([finder.chunks(rows.slice(0, 20)), finder.chunks(rows.slice(20))])
    finder.check()
    joined = rows.join(plan, on=columns, how="left", nulls_equal=True, maintain_order="left")
    assert found.tolist() == joined.get_column("chunk").to_list()
    f2 = (rows.get_column("facility_id") == "F2").fill_null(False).to_numpy()
    assert len(set(found[f2])) == 4  # 40 rows cut in four

    unknown = ChunkFinder("silver.lab_results", plan, columns)
    moved = pl.col("order_id").str.replace("^O005$", "O0395")  # from F2's first chunk into its last's range
    unknown.chunks(rows.with_columns(moved))
    with pytest.raises(RuntimeError, match="silver.lab_results: rows changed between the two reads"):
        unknown.check()  # its chunk has a row more than the plan's, another a row fewer
    with pytest.raises(RuntimeError, match="rows changed"):
        unknown.chunks(pl.DataFrame({"facility_id": ["F4"], "order_id": ["O1"]}))  # a facility not planned
