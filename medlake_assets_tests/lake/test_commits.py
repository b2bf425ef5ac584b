"""A commit works out the table's metadata once per change and copies none of its history (pyiceberg 0.12
deep-copies every snapshot on each of the 23 reads of a merge append, and once more in the catalog's
commit), gives the metadata pyiceberg's update would, and commits as pyiceberg's transaction does."""

from __future__ import annotations

import time

import pyarrow as pa
import pytest
from pyiceberg.expressions import AlwaysFalse
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table import Transaction as PyicebergTransaction
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update import update_table_metadata
from pyiceberg.table.update.snapshot import ExpireSnapshots, ManageSnapshots
from pyiceberg.types import NestedField, StringType

from medlake_assets.ingest.bronze import TABLE_PROPERTIES
from medlake_assets.lake import Lake
from medlake_assets.lake.catalog import ensure_table
from medlake_assets.lake.commits import Transaction, apply_updates
from medlake_assets.lake.files import StagedFiles, commit_files
from medlake_assets.lake.settings import load_settings

SCHEMA = pa.schema([("key", pa.int64()), ("round", pa.int64())])


def _rows(round_: int) -> pa.Table:
    return pa.table({"key": [round_ * 10 + n for n in range(3)], "round": [round_] * 3}, SCHEMA)


@pytest.fixture
def table(tmp_path) -> Table:
    """A table with the history of 12 commits."""
    catalog = Lake(load_settings({"MEDLAKE_HOME": str(tmp_path / "home")})).catalog
    table = ensure_table(catalog, "silver.history", SCHEMA, [], TABLE_PROPERTIES)
    for round_ in range(12):
        table.append(_rows(round_))
    return table


@pytest.fixture
def snapshots_copied(monkeypatch) -> list[int]:
    """Counts deep copies of a snapshot (each copy of a table's metadata copies all of them)."""
    calls: list[int] = []
    copy = Snapshot.__deepcopy__

    def counted(self, memo=None):
        calls.append(1)
        return copy(self, memo)

    monkeypatch.setattr(Snapshot, "__deepcopy__", counted)
    return calls


def test_a_commit_copies_none_of_the_history_where_pyiceberg_copies_it_at_each_read(
    table: Table, snapshots_copied: list[int]
) -> None:
    staged = StagedFiles(table)
    staged.write(_rows(100))
    commit_files(table, staged.files, AlwaysFalse(), {"medlake.batch": "b-100"})
    ours = len(snapshots_copied)

    snapshots_copied.clear()
    with PyicebergTransaction(table.refresh()) as transaction:
        transaction.append(_rows(101))  # pyiceberg's own transaction, the same merge append
    theirs = len(snapshots_copied)

    assert ours == 0
    # 13 snapshots copied at each of the transaction's reads. When pyiceberg stops copying them, this
    # fails: `apply_updates` and `Transaction` can then go.
    assert theirs >= 10 * 13
    rounds = table.refresh().scan().to_arrow().column("round").to_pylist()
    assert sorted(set(rounds)) == [*range(12), 100, 101]
    assert len(rounds) == 14 * 3
    batches = [snapshot.summary.get("medlake.batch") for snapshot in table.snapshots() if snapshot.summary]
    assert batches.count("b-100") == 1


def _staged_updates(table: Table, kind: str) -> tuple:
    """The updates of one kind of change the lake commits, staged on pyiceberg's transaction."""
    transaction = PyicebergTransaction(table)
    if kind == "append":  # bronze, quarantine
        transaction.append(_rows(300))
    elif kind == "overwrite":  # a silver merge replacing a file
        transaction.overwrite(_rows(301), overwrite_filter="round = 11")
    elif kind == "properties":  # ensure_table
        transaction.set_properties({"medlake.owner": "data-platform"})
    elif kind == "schema":  # a column added to the source's metadata
        with transaction.update_schema() as update:
            update.union_by_name(Schema(NestedField(3, "note", StringType(), required=False)))
    elif kind == "expire":  # maintenance
        ExpireSnapshots(transaction).by_ids(
            [snapshot.snapshot_id for snapshot in table.snapshots()[:5]]
        ).commit()
    elif kind == "restore":  # medlake restore
        ManageSnapshots(transaction).set_current_snapshot(
            snapshot_id=table.snapshots()[3].snapshot_id
        ).commit()
    return transaction._updates


@pytest.mark.parametrize("kind", ["append", "overwrite", "properties", "schema", "expire", "restore"])
def test_updates_give_the_metadata_pyiceberg_gives_and_leave_the_base_as_it_was(
    table: Table, kind: str
) -> None:
    base = table.metadata
    before = base.model_dump()
    updates = _staged_updates(table, kind)
    assert updates
    started_ms = int(time.time() * 1000)

    ours = apply_updates(base, updates, table.metadata_location)
    theirs = update_table_metadata(base, updates, metadata_location=table.metadata_location)

    assert base.model_dump() == before
    assert _unstamped(ours, started_ms) == _unstamped(theirs, started_ms)
    assert abs(ours.last_updated_ms - theirs.last_updated_ms) < 60_000


def _unstamped(metadata, started_ms: int) -> dict:
    """The metadata without the times an update stamps as it runs (a change without a snapshot, a restore's
    snapshot-log entry): ours and pyiceberg's ran a few milliseconds apart."""
    log = [
        entry.model_copy(update={"timestamp_ms": 0}) if entry.timestamp_ms >= started_ms else entry
        for entry in metadata.snapshot_log
    ]
    return metadata.model_copy(update={"last_updated_ms": 0, "snapshot_log": log}).model_dump()


def test_a_staged_change_shows_in_the_next_read_and_lands(table: Table) -> None:
    transaction = Transaction(table)
    before = transaction.table_metadata
    assert transaction.table_metadata is before  # nothing staged: the same metadata, not a new copy
    transaction.set_properties({"medlake.owner": "data-platform"})
    after = transaction.table_metadata
    assert after is not before
    assert after.properties["medlake.owner"] == "data-platform"
    assert "medlake.owner" not in table.metadata.properties  # not committed yet
    transaction.commit_transaction()

    assert table.metadata.properties["medlake.owner"] == "data-platform"
    # The table's new metadata is a new state: a later transaction works it out from that one.
    assert Transaction(table).table_metadata.properties["medlake.owner"] == "data-platform"


def test_a_failed_commit_leaves_the_table_as_it_was(table: Table) -> None:
    snapshots = len(table.refresh().metadata.snapshots)
    with pytest.raises(RuntimeError, match="before the commit"), Transaction(table) as transaction:
        transaction.append(_rows(200))
        raise RuntimeError("before the commit")
    assert len(table.refresh().metadata.snapshots) == snapshots
    assert 200 not in table.scan().to_arrow().column("round").to_pylist()
