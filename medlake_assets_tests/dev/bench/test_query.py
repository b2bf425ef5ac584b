"""`medlake bench query`: the synthetic history, the DuckDB-to-PostgreSQL SQL, and both engines agreeing.

The end-to-end test runs against the real PostgreSQL in MEDLAKE_TEST_POSTGRES_URL (skipped without it),
in a database of its own that it drops afterwards.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import psycopg
import pytest
from polars.testing import assert_frame_equal

from medlake_assets.lake import Lake
from medlake_assets.serving.sql import connect
from medlake_assets.silver.encounters import derive_encounters
from medlake_assets_tests.postgres import postgres_url
from medlake_dev.bench.query import (
    END,
    LAB_RESULTS_PER_ENCOUNTER,
    BenchQueryError,
    Facilities,
    Scale,
    adt_events_window,
    bench_queries,
    bench_settings,
    encounters_chunk,
    first_difference,
    lab_results_chunk,
    normalize_rows,
    postgres_conninfo,
    run_query_bench,
    to_postgres,
    uniform,
)

SMALL = Scale(lab_results=5_000, facilities=6, days=10)


def test_uniform_is_a_pure_function_of_seed_stream_and_index() -> None:
    index = np.arange(10_000, dtype=np.int64)
    values = uniform(index, 3, seed=7)
    assert ((values >= 0) & (values < 1)).all()
    assert np.array_equal(values[5000:], uniform(index[5000:], 3, seed=7))
    assert not np.array_equal(values, uniform(index, 4, seed=7))
    assert not np.array_equal(values, uniform(index, 3, seed=8))
    assert abs(values.mean() - 0.5) < 0.01


def test_lab_results_do_not_depend_on_the_chunking() -> None:
    facilities = Facilities.make(SMALL)
    whole = lab_results_chunk(SMALL, facilities, 0, 1000)
    parts = pl.concat(
        [lab_results_chunk(SMALL, facilities, 0, 500), lab_results_chunk(SMALL, facilities, 500, 1000)]
    )
    key = ["facility_id", "order_id", "test_code"]
    assert_frame_equal(whole.sort(key), parts.sort(key))
    assert whole.select(key).is_unique().all()
    assert whole["result_ts"].min() >= SMALL.start and whole["result_ts"].max() < SMALL.end
    assert set(whole["result_status"]) == {"P", "F", "C"}


def test_adt_windows_partition_the_events_and_encounters_fold_them() -> None:
    facilities = Facilities.make(SMALL)
    middle = SMALL.start + timedelta(days=4)
    windows = pl.concat(
        [
            adt_events_window(SMALL, facilities, SMALL.start, middle),
            adt_events_window(SMALL, facilities, middle, SMALL.end),
        ]
    )
    assert windows["message_control_id"].is_unique().all()
    encounters = encounters_chunk(SMALL, facilities, 0, SMALL.encounters)
    assert encounters.height == SMALL.encounters == SMALL.lab_results // LAB_RESULTS_PER_ENCOUNTER
    # Every event of every encounter is in exactly one window: folding the windows gives the same rows.
    assert_frame_equal(encounters.drop("_deleted"), derive_encounters(windows))
    assert set(encounters["status"]) == {"admitted", "transferred", "discharged"}


def test_to_postgres_rewrites_what_sqlglot_leaves_duckdb_only() -> None:
    sql = (
        "SELECT facility, x::DATE AS day, count(*) AS n, "
        "to_json(map(list(rule ORDER BY rule), list(rows ORDER BY rule)))::VARCHAR AS by_rule, "
        "getvariable('as_of') AS as_of FROM t GROUP BY ALL"
    )
    postgres = to_postgres(sql, END)
    assert "GROUP BY 1, 2, 5" in postgres
    assert "JSON_OBJECT_AGG(rule, rows ORDER BY rule)" in postgres
    assert "CAST('2026-01-01T00:00:00+00:00' AS TIMESTAMPTZ)" in postgres
    assert "getvariable" not in postgres.lower() and "MAP(" not in postgres


def test_first_difference_names_row_and_column_never_values() -> None:
    columns = ["facility", "rate"]
    left = normalize_rows([("F0002", 0.5), ("F0001", 0.1234)])
    assert first_difference(columns, left, normalize_rows([("F0001", 0.1235), ("F0002", 0.5)])) is None
    changed = first_difference(columns, left, normalize_rows([("F0001", 0.2), ("F0002", 0.5)]))
    assert changed == "sorted row 1, column 'rate' differs"
    assert first_difference(columns, left, left[:1]) == "2 rows on medlake, 1 on PostgreSQL"


def test_no_postgres_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(BenchQueryError, match="MEDLAKE_TEST_POSTGRES_URL"):
        run_query_bench(SMALL, None, tmp_path)


@pytest.fixture
def bench_database() -> str:
    """A database of its own on the test server, dropped afterwards."""
    name = f"medlake_bench_query_test_{uuid.uuid4().hex[:10]}"
    yield name
    server = postgres_conninfo(postgres_url(), "postgres")
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_both_engines_return_the_same_rows_for_every_query(tmp_path: Path, bench_database: str) -> None:
    url = postgres_url()
    report = run_query_bench(SMALL, url, tmp_path, database=bench_database, repeats=1)

    expected = {"silver.lab_results": SMALL.lab_results, "silver.encounters": SMALL.encounters}
    assert {name: report.counts[name] for name in expected} == expected
    tables = [name for name in report.counts if name.startswith(("silver.", "quarantine.", "meta."))]
    con = connect(Lake(bench_settings(tmp_path)))
    conninfo = postgres_conninfo(url, bench_database)
    with psycopg.connect(conninfo) as pg:
        for name in tables:
            in_lake = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            in_postgres = pg.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            assert in_lake == in_postgres == report.counts[name], name

    names = [query.name for query in bench_queries(bench_settings(tmp_path), SMALL)]
    assert [timing.name for timing in report.timings] == names
    assert {"bed_availability", "data_quality_scorecard", "facility_last_24h"} <= set(names)
    for timing in report.timings:
        assert timing.difference is None, f"{timing.name}: {timing.difference}"
        assert timing.rows > 0, timing.name


@pytest.mark.e2e
def test_a_rerun_reuses_both_copies_and_reports_a_difference(tmp_path: Path, bench_database: str) -> None:
    url = postgres_url()
    first = run_query_bench(SMALL, url, tmp_path, database=bench_database, repeats=1)
    assert first.mismatches == []
    # One final result flagged abnormal on PostgreSQL only: the abnormal-rate queries must disagree.
    with psycopg.connect(postgres_conninfo(url, bench_database)) as pg:
        pg.execute(
            "UPDATE silver.lab_results SET abnormal_flag = 'H' WHERE ctid = (SELECT ctid "
            "FROM silver.lab_results WHERE abnormal_flag = 'N' AND result_status = 'F' AND NOT _deleted "
            "LIMIT 1)"
        )
    rerun = run_query_bench(SMALL, url, tmp_path, database=bench_database, repeats=1)
    assert rerun.build_seconds is None and rerun.load_seconds is None  # lake and copy reused
    differing = {timing.name for timing in rerun.mismatches}
    assert {"abnormal_lab_rates", "full_year_aggregate"} <= differing
    assert not differing & {"bed_availability", "daily_admissions_discharges", "data_quality_scorecard"}
