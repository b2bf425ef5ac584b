"""Manifests are merged as commits add them: a table taking a commit per run keeps a few manifests, and
every row, every snapshot's rows and the deleted files stay as they were."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import AlwaysFalse, EqualTo
from pyiceberg.expressions.visitors import _ManifestEvalVisitor
from pyiceberg.manifest import ManifestFile
from pyiceberg.table import Table, TableProperties
from pyiceberg.transforms import IdentityTransform

from medlake_assets.ingest.bronze import TABLE_PROPERTIES
from medlake_assets.lake import Lake
from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.files import StagedFiles, commit_files
from medlake_assets.lake.manifests import MERGE_PROPERTIES, merging_overwrite
from medlake_assets.lake.settings import load_settings

SCHEMA = pa.schema([("key", pa.int64()), ("round", pa.int64()), ("part", pa.string())])
BY_PART = [("part", IdentityTransform(), "part")]
UNMERGED = {key: value for key, value in TABLE_PROPERTIES.items() if key not in MERGE_PROPERTIES}


def _catalog(tmp_path) -> Catalog:
    return Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})).catalog


def _rows(keys: range, round_: int, part: str) -> pa.Table:
    return pa.table({"key": list(keys), "round": [round_] * len(keys), "part": [part] * len(keys)}, SCHEMA)


def _manifests(table: Table) -> int:
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return len(snapshot.manifests(table.io))


def _a_day_of_commits(table: Table, rounds: int) -> dict[int, tuple[int, int]]:
    """Per round: an append of 10 new keys (pyiceberg's `append`, as bronze does), then an overwrite that
    replaces the file of round-1's keys in partition "b" with the same keys a round later (`commit_files`
    with `replaced`, as a silver merge does), then a filtered delete and append (`commit_files`). Returns the
    snapshot after each round with the rows it should hold."""
    expected: dict[int, tuple[int, int]] = {}
    rows = 0
    for round_ in range(1, rounds + 1):
        table.append(_rows(range(round_ * 100, round_ * 100 + 10), round_, "a"))
        table.refresh()
        staged = StagedFiles(table)
        staged.write(_rows(range(0, 5), round_, "b"))
        replaced = [task.file for task in table.scan(row_filter=EqualTo("part", "b")).plan_files()]
        commit_files(table, staged.files, AlwaysFalse(), {}, replaced=replaced)
        table.refresh()
        staged = StagedFiles(table)
        staged.write(_rows(range(round_ * 1000, round_ * 1000 + 3), round_, "c"))
        commit_files(table, staged.files, EqualTo("part", "c"), {})
        table.refresh()
        rows = 10 * round_ + 5 + 3
        expected[table.metadata.current_snapshot_id or 0] = (rows, round_)
    return expected


def test_a_table_taking_a_commit_per_run_keeps_few_manifests_and_every_row(tmp_path) -> None:
    catalog = _catalog(tmp_path)
    merged = ensure_table(catalog, "silver.merged", SCHEMA, BY_PART, TABLE_PROPERTIES)
    unmerged = ensure_table(catalog, "silver.unmerged", SCHEMA, BY_PART, UNMERGED)
    expected = _a_day_of_commits(merged, 40)
    _a_day_of_commits(unmerged, 40)

    assert _manifests(unmerged) >= 40  # without merging: a manifest per round (the appends' own)
    assert _manifests(merged) <= int(MERGE_PROPERTIES[TableProperties.MANIFEST_MIN_MERGE_COUNT])
    for table in (merged, unmerged):
        rows = table.scan().to_arrow()
        assert rows.num_rows == 10 * 40 + 5 + 3
        assert rows.filter(pc.equal(rows["part"], "b"))["round"].to_pylist() == [40] * 5
        assert sorted(rows.filter(pc.equal(rows["part"], "c"))["key"].to_pylist()) == [40_000, 40_001, 40_002]
        assert len(set(rows["key"].to_pylist())) == rows.num_rows
    # Time travel: earlier snapshots (every fifth round's) still read exactly what they held.
    for snapshot_id, (rows_then, round_) in list(expected.items())[::5]:
        then = merged.scan(snapshot_id=snapshot_id).to_arrow()
        assert then.num_rows == rows_then
        assert max(then["round"].to_pylist()) == round_


def test_tables_made_before_get_the_merge_properties_and_keep_their_own(tmp_path) -> None:
    catalog = _catalog(tmp_path)
    own = {**UNMERGED, TableProperties.MANIFEST_MIN_MERGE_COUNT: "50"}
    ensure_table(catalog, "silver.older", SCHEMA, [], own)

    table = ensure_table(catalog, "silver.older", SCHEMA, [], TABLE_PROPERTIES)

    assert table.properties[TableProperties.MANIFEST_MERGE_ENABLED] == "true"
    assert table.properties[TableProperties.MANIFEST_MIN_MERGE_COUNT] == "50"  # set by hand: kept
    metadata_files = len(table.metadata.metadata_log)
    assert len(ensure_table(catalog, "silver.older", SCHEMA, [], TABLE_PROPERTIES).metadata.metadata_log) == (
        metadata_files
    )  # nothing left to set: no commit


def test_an_overwrite_judges_each_manifest_by_its_own_partitions_when_threads_judge_at_once(
    tmp_path, monkeypatch
) -> None:
    """pyiceberg judges the parent snapshot's manifests from a thread pool when an overwrite looks for the
    files it replaces. Two threads are made to be inside the judgement at once: each must still see its
    own manifest's partitions (pyiceberg's evaluator, shared, gave both the same answer)."""
    catalog = _catalog(tmp_path)
    table = ensure_table(catalog, "silver.judged", SCHEMA, BY_PART, UNMERGED)
    for part in ("a", "b"):
        table.append(_rows(range(10), 1, part))
    table.refresh()
    manifests = _manifests_by_part(table)
    [replaced] = [task.file for task in table.scan(row_filter=EqualTo("part", "b")).plan_files()]
    overwrite = merging_overwrite(table.transaction(), {})  # never committed
    overwrite.delete_data_file(replaced)
    overwrite._build_delete_files_partition_predicate()  # as its commit does first: only partition "b"
    judge = overwrite._build_manifest_evaluator(replaced.spec_id)

    both_inside = threading.Barrier(2)
    visit_equal = _ManifestEvalVisitor.visit_equal

    def visit_equal_once_both_are_inside(self, term, literal):  # type: ignore[no-untyped-def]
        both_inside.wait(timeout=10)
        return visit_equal(self, term, literal)

    monkeypatch.setattr(_ManifestEvalVisitor, "visit_equal", visit_equal_once_both_are_inside)
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(judge, [manifests["a"], manifests["b"]]))

    assert verdicts == [False, True]


def _manifests_by_part(table: Table) -> dict[str, ManifestFile]:
    """The current snapshot's manifests, each holding one partition, by that partition's value."""
    snapshot = table.current_snapshot()
    assert snapshot is not None
    by_part = {}
    for manifest in snapshot.manifests(table.io):
        [part] = {entry.data_file.partition[0] for entry in manifest.fetch_manifest_entry(table.io)}
        by_part[part] = manifest
    return by_part
