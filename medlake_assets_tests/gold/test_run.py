"""Header checks over a report's rows count failing rows exactly; gold writes replace the table, and a
report whose columns changed gets its table recreated."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from medlake_assets.gold.run import evaluate_checks, query_report, views_read, write_gold
from medlake_assets.gold.spec import load_report
from medlake_assets.serving.sql import connect, relations
from medlake_assets.silver.tables import ensure_table
from medlake_assets_tests.lake_helpers import local_settings, open_lake, table_rows

HEADER = """-- description: test report
-- schedule: daily
-- checks:
--   - {rule: not_null, columns: [facility, day]}
--   - {rule: unique, columns: [facility, day]}
--   - {rule: range, column: rate, min: 0, max: 1, severity: warn}
--   - {rule: range, column: share, min: 0.5}
SELECT 1
"""


def report(tmp_path: Path):
    path = tmp_path / "sample.sql"
    path.write_text(HEADER)
    return load_report(path)


def test_checks_count_failing_rows(tmp_path):
    rows = pa.table(
        {
            "facility": ["F1", "F1", "F1", None, None],
            "day": ["d1", "d1", "d2", "d1", None],
            "rate": [0.2, 1.5, -0.1, 0.7, None],
            "share": [0.2, 0.5, 0.6, None, 0.1],
        }
    )
    outcomes = evaluate_checks(rows, report(tmp_path).header.checks)
    assert [(o.name, o.passed, o.severity, o.failing_rows) for o in outcomes] == [
        ("not_null_facility_day", False, "error", 2),
        ("unique_facility_day", False, "error", 2),  # (F1, d1) twice; the null keys are distinct
        ("range_rate", False, "warn", 2),
        ("range_share", False, "error", 2),
    ]
    clean = pa.table({"facility": ["F1"], "day": ["d1"], "rate": [0.75], "share": [0.5]})
    assert all(outcome.passed for outcome in evaluate_checks(clean, report(tmp_path).header.checks))


def test_write_replaces_and_recreates_on_new_columns(tmp_path):
    lake = open_lake(local_settings(tmp_path / "home"))
    spec = report(tmp_path)
    write_gold(lake.catalog, spec, pa.table({"facility": ["F1", "F2"], "rate": [0.5, 0.25]}))
    write_gold(lake.catalog, spec, pa.table({"facility": ["F3"], "rate": [1.0]}))
    assert table_rows(lake, "gold.sample").to_pylist() == [{"facility": "F3", "rate": 1.0}]
    write_gold(lake.catalog, spec, pa.table({"facility": ["F4"], "beds": [3]}))
    assert table_rows(lake, "gold.sample").to_pylist() == [{"facility": "F4", "beds": 3}]
    write_gold(
        lake.catalog,
        spec,
        pa.table({"facility": pa.array([], pa.string()), "beds": pa.array([], pa.int64())}),
    )
    assert table_rows(lake, "gold.sample").num_rows == 0


def test_a_report_connects_only_the_tables_it_reads(tmp_path):
    lake = open_lake(local_settings(tmp_path / "home"))
    for name, rows in [("silver.read_me", 3), ("silver.other", 5)]:
        ensure_table(lake.catalog, name, pa.schema([("n", pa.int64())]), []).append(
            pa.table({"n": list(range(rows))})
        )
    path = tmp_path / "counts.sql"
    path.write_text("-- description: t\n-- schedule: daily\nSELECT count(*) AS n FROM silver.read_me\n")
    spec = load_report(path)
    assert views_read(spec) == ["silver.read_me"]
    con = connect(lake, tables=views_read(spec))
    names = relations(con)
    assert "silver.read_me" in names and "silver.other" not in names
    assert "meta.files" in names, "the ledger is there for any report"
    assert query_report(con, spec, datetime.now(UTC)).to_pylist() == [{"n": 3}]
    # Anything but a table or the ledger gets every view: silver_deid.* is built over all of silver.
    path.write_text("-- description: t\n-- schedule: daily\nSELECT count(*) AS n FROM silver_deid.read_me\n")
    assert views_read(load_report(path)) is True
