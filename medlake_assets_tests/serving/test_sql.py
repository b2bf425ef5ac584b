"""`connect()` views over every layer, time travel, and the interactive shell fed through stdin."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import duckdb
import pytest
from rich.console import Console

from medlake_assets.serving.catalog_info import AsOfError
from medlake_assets.serving.sql import SHELL_HELP, connect, relations, render, shell
from medlake_assets_tests.serving.serving_lake import build_serving_lake, sorted_rows

COLUMNS = "facility, patient_id, test_code, value, resulted_on, _record"


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    return build_serving_lake(tmp_path_factory.mktemp("sql") / "home")


def _rows(con: duckdb.DuckDBPyConnection, table: str) -> list[dict]:
    relation = con.sql(f"SELECT {COLUMNS} FROM {table} ORDER BY _record")
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def test_current_state_shows_every_layer_and_the_ledger(serving):
    con = connect(serving.lake)
    assert relations(con) == [
        "bronze.late_feed",
        "meta.files",
        "meta.freshness",
        "meta.held",
        "meta.processed",
        "meta.quality",
        "quarantine.empty_feed",
        "silver.lab_results",
    ]
    assert _rows(con, "silver.lab_results") == sorted_rows(serving.current_rows)
    assert con.sql("SELECT count(*) FROM bronze.late_feed").fetchone() == (5,)
    assert con.sql("SELECT count(*) FROM quarantine.empty_feed").fetchone() == (0,)
    assert con.sql("SELECT count(*) FROM meta.files").fetchone() == (0,)


def test_a_ledger_only_connection_has_the_ledger_and_no_table(serving):
    con = connect(serving.lake, tables=False)
    # What the freshness checks read (their values: defs/test_freshness_check.py), and no lake table.
    assert relations(con) == ["meta.files", "meta.freshness", "meta.held", "meta.processed", "meta.quality"]


@pytest.mark.parametrize("form", ["id", "id_text", "iso"])
def test_as_of_returns_the_earlier_snapshots_rows(serving, form):
    iso = datetime.fromtimestamp(serving.first_timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    as_of = {"id": serving.first_snapshot_id, "id_text": str(serving.first_snapshot_id), "iso": iso}[form]
    con = connect(serving.lake, as_of=as_of)
    assert _rows(con, "silver.lab_results") == sorted_rows(serving.first_rows)
    # Created after that moment: absent, as it was then. Empty then and now: still there, empty.
    assert "bronze.late_feed" not in relations(con)
    with pytest.raises(duckdb.CatalogException, match="late_feed"):
        con.sql("SELECT count(*) FROM bronze.late_feed")
    assert con.sql("SELECT count(*) FROM quarantine.empty_feed").fetchone() == (0,)


def test_as_of_the_current_snapshot_equals_the_present(serving):
    con = connect(serving.lake, as_of=serving.current_snapshot_id)
    assert _rows(con, "silver.lab_results") == sorted_rows(serving.current_rows)
    assert con.sql("SELECT count(*) FROM bronze.late_feed").fetchone() == (5,)


def test_unknown_snapshot_is_refused(serving):
    with pytest.raises(AsOfError, match="no table in the lake has snapshot 42"):
        connect(serving.lake, as_of="42")


def test_render_limits_rows_and_never_reads_values_as_markup():
    con = duckdb.connect()
    relation = con.sql("SELECT * FROM (VALUES ('[bold]x[/bold]'), ('b'), ('c')) AS t(v)")
    console = Console(file=io.StringIO(), width=80)
    console.print(render(relation, limit=2))
    text = console.file.getvalue()
    assert "[bold]x[/bold]" in text
    assert "│ b " in text
    assert "│ c " not in text
    assert "first 2 rows shown" in text


def test_shell_runs_multiline_statements_dot_commands_and_survives_errors(serving, monkeypatch, tmp_path):
    script = "\n".join(
        [
            ".tables",
            "SELECT facility, count(*) AS n",
            "FROM silver.lab_results",
            "GROUP BY facility ORDER BY facility;",
            "SELECT * FROM no_such_table;",
            ".bogus",
            "SELECT 40 + 2 AS answer;",
            ".quit",
            "SELECT 'after quit';",
        ]
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(script + "\n"))
    console = Console(file=io.StringIO(), width=120)
    history = tmp_path / "history"
    shell(connect(serving.lake), console, history_file=history)
    text = console.file.getvalue()
    counts = {}
    for row in serving.current_rows:
        counts[row["facility"]] = counts.get(row["facility"], 0) + 1
    for facility, count in counts.items():
        assert f"│ {facility}       │ {count:<2} │" in text
    names = [
        "bronze.late_feed",
        "meta.files",
        "meta.freshness",
        "meta.held",
        "meta.processed",
        "meta.quality",
        "quarantine.empty_feed",
    ]
    assert "\n".join([*names, "silver.lab_results"]) in text
    assert "Table with name no_such_table does not exist" in text
    assert "unknown command .bogus" in text
    assert "│ 42     │" in text
    assert "after quit" not in text
    assert history.exists()


def test_shell_ends_at_end_of_input_and_drops_an_unfinished_statement(serving, monkeypatch):
    def session(typed: str) -> str:
        monkeypatch.setattr("sys.stdin", io.StringIO(typed))
        console = Console(file=io.StringIO(), width=200)  # wide enough that the help is not wrapped
        shell(connect(serving.lake), console)
        return console.file.getvalue()

    # Unfinished at end of input: the shell printed its help and nothing else, then returned.
    assert session("SELECT 1 AS one\n") == f"{SHELL_HELP}\n"
    # The same statement finished with ';' runs (so the one above was dropped, not lost to a broken shell).
    assert "one" in session("SELECT 1 AS one;\n").removeprefix(f"{SHELL_HELP}\n")


def test_reading_the_sqlite_ledger_never_loses_a_later_ledger_write(tmp_path):
    """DuckDB's sqlite scanner links its own SQLite; if it opened the live ledger file, closing it dropped
    this process's locks and another process deleted the WAL this process still wrote to: writes after
    a `medlake sql` connection (a report, `ingest --once`'s summary) were lost to every other process."""
    import subprocess
    import sys
    from datetime import date

    from medlake_assets.lake import Lake
    from medlake_assets.lake.ledger import LandedFile
    from medlake_assets.lake.settings import load_settings

    lake = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path)}))
    database = tmp_path / "catalog.db"

    def seen_by_another_process() -> int:
        code = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])"
        query = "SELECT count(*) FROM medlake_files"
        done = subprocess.run(
            [sys.executable, "-c", code, str(database), query], capture_output=True, text=True, check=True
        )
        return int(done.stdout)

    for number in range(3):
        con = connect(lake)
        assert con.execute("SELECT count(*) FROM meta.files").fetchone()[0] == number
        con.close()
        assert seen_by_another_process() == number
        key = f"landing/lab_results/2026/01/01/F1/{number}.csv.gz"
        lake.ledger.register(
            [LandedFile("local", key, f"etag{number}", 1, "lab_results", "F1", date(2026, 1, 1))]
        )
    assert lake.ledger.counts()["pending"] == 3
    assert seen_by_another_process() == 3
