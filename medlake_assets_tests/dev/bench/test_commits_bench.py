"""`medlake bench commits` compares two tables that took the same commits, one through medlake's transaction
and catalog, the other through pyiceberg's."""

from __future__ import annotations

from pathlib import Path

from medlake_dev.bench.commits import run_commit_benchmark


def test_bench_commits_compares_the_same_commits_through_both_transactions(tmp_path: Path) -> None:
    outcome = run_commit_benchmark(rounds=12, every=6, work_dir=tmp_path)

    assert [point.rounds for point in outcome.checkpoints] == [6, 12]
    last = outcome.checkpoints[-1]
    # Per round an append and a replace: two snapshots, one new row kept and one row replaced.
    assert last.snapshots["medlake"] == last.snapshots["pyiceberg"] == 24
    assert last.rows["medlake"] == last.rows["pyiceberg"] == 12 + 1
    assert last.metadata_bytes["medlake"] > outcome.checkpoints[0].metadata_bytes["medlake"]
    assert all(seconds > 0 for seconds in last.commit_seconds.values())
    assert all(seconds > 0 for seconds in last.load_seconds.values())
    headers = [str(column.header) for column in outcome.__rich__().columns]
    assert headers[4] == "ratio" and headers[6] == "load ratio"


def test_bench_commits_stops_the_baseline_after_its_rounds(tmp_path: Path) -> None:
    outcome = run_commit_benchmark(rounds=12, every=6, work_dir=tmp_path, baseline_rounds=6)

    first, last = outcome.checkpoints
    assert first.snapshots == {"medlake": 12, "pyiceberg": 12} and first.ratio is not None
    assert last.snapshots == {"medlake": 24}  # the baseline took no commit after round 6
    assert last.ratio is None and set(last.commit_seconds) == {"medlake"}
    assert set(last.load_seconds) == {"medlake", "pyiceberg"}  # both catalogs load medlake's table
    assert last.rows == {"medlake": 12 + 1}
    cells = [list(column.cells) for column in outcome.__rich__().columns]
    assert cells[3][1].startswith("- / ") and cells[4][1] == "-"
