"""Bronze in bounded memory: a batch whose records are written in many small data files, its CSV members
parsed in small pieces, large archives streamed in the run's process while a pool parses the others, gives
exactly the bronze and quarantine rows of the batch loaded the default way, in one commit per table."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from medlake_assets.ingest import batch as batch_module
from medlake_assets.ingest import pipeline, pool
from medlake_assets.ingest.batch import load_batch
from medlake_assets.ingest.bronze import bronze_table
from medlake_assets.ingest.landing import day_prefix, register_landed
from medlake_assets.ingest.parsers import csv as csv_parser
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.ledger import batch_id_for
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_aes
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_assets_tests.silver.test_chunked_loads import LAB_HEADER
from medlake_dev.generate import write_feeds

GENERATION = {"facilities": 3, "archives": 16, "seed": 11, "bad_rate": 0.02, "day": DAY, "size_scale": 0.01}


def lab_member(facility: str, seed: int, rows: int) -> bytes:
    """Lab rows with quoted names holding newlines and quotes, ragged rows and blank lines among them."""
    rng = random.Random(seed)
    lines = [LAB_HEADER.rstrip("\n")]
    for n in range(rows):
        roll = rng.random()
        name = '"Glucose, ""fasting""\nserum"' if roll < 0.1 else "Glucose"
        fields = [facility, f"P{n}", f"O{seed}-{n:05d}", "2345-7", name, "5.1", "mmol/L", "3.9-5.5", "N", "F"]
        if roll > 0.98:
            fields = fields[:4]  # a ragged record: a csv.field_count reject
        lines.append(",".join([*fields, f"2026-11-20T10:{n % 60:02d}:00Z"]))
        if 0.5 < roll < 0.52:
            lines.append("")
    return ("\n".join(lines) + "\n").encode()


def land(home: Path, password: str) -> None:
    write_feeds(home, **GENERATION)
    store = LocalObjectStore(home)
    prefix = f"landing/lab_results/{DAY:%Y/%m/%d}"
    members = {f"results-{n}.csv": lab_member("F7", n, 3000) for n in range(3)}
    store.put(f"{prefix}/F7/large.zip", zip_aes(members, password))
    store.put(f"{prefix}/F8/small.csv.gz", gzip_bytes(lab_member("F8", 9, 400)))


def load_day(home: Path) -> list[tuple[str, int]]:
    """Every source's landed files as one batch each; (batch id, records) per source."""
    lake = open_lake(local_settings(home))
    specs = list(lake.sources.values())
    register_landed(lake.store, lake.ledger, specs, [day_prefix(spec.name, DAY) for spec in specs])
    loaded = []
    for spec in specs:
        ids = sorted(row.id for row in lake.ledger.day_files(spec.name, DAY) if row.status == "pending")
        batch_id = batch_id_for(spec.name, DAY, ids)
        lake.ledger.assign_batch(ids, batch_id)
        result = load_batch(lake, spec, batch_id, lake.ledger.batch_files(batch_id))
        loaded.append((spec.name, result.records))
        # One commit per batch: every data file of it in a single snapshot.
        snapshots = [
            s for s in bronze_table(lake.catalog, spec).snapshots() if s.summary[BATCH_PROPERTY] == batch_id
        ]
        assert len(snapshots) == 1
    return loaded


def contents(home: Path) -> dict[str, list[tuple]]:
    con = connect(open_lake(local_settings(home)))
    names = ("adt_events", "bed_census", "lab_results", "patient_documents")
    tables = [f"bronze.{name}" for name in names] + [f"quarantine.{name}" for name in names]
    return {
        name: con.execute(f"SELECT * EXCLUDE (_ingested_at) FROM {name} ORDER BY ALL").fetchall()
        for name in tables
    }


@pytest.mark.parametrize("workers", ["1", "2"])
def test_small_pieces_and_files_give_the_default_batch(
    tmp_path: Path, archive_password: str, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    land(tmp_path / "default", archive_password)
    shutil.copytree(tmp_path / "default", tmp_path / "small")
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", workers)
    expected_counts = load_day(tmp_path / "default")
    expected = contents(tmp_path / "default")

    # Pieces of ~20 KB of CSV sent on in tables of ~10 KB of records, a data file per ~50 KB of records,
    # archives of 8 KB or more in this process.
    monkeypatch.setattr(csv_parser, "CHUNK_CHARS", 20_000)
    monkeypatch.setattr(pipeline, "PIECE_BYTES", 10_000)
    monkeypatch.setattr(batch_module, "WRITE_BYTES", 50_000)
    monkeypatch.setattr(pool, "IN_PROCESS_BYTES", 8_000)
    assert load_day(tmp_path / "small") == expected_counts
    assert contents(tmp_path / "small") == expected

    lab = expected["bronze.lab_results"]
    assert sum(row[0] == "F7" for row in lab) > 8000  # the large archive's three members
    rejects = {row[-3] for row in expected["quarantine.lab_results"]}
    assert "csv.field_count" in rejects
    lake = open_lake(local_settings(tmp_path / "small"))
    small_lab = bronze_table(lake.catalog, lake.sources["lab_results"])
    assert len(small_lab.inspect.files()) > 10  # written in many files, committed once
