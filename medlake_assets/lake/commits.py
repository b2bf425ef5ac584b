"""Committing to Iceberg tables: a transaction that works out the table's metadata once per change without
copying its history, and redoing a change that conflicted with a concurrent writer's commit.

pyiceberg 0.12 retries a commit that lost the race itself (`commit.retry.num-retries`, rebased on fresh
metadata), but an overwrite whose filter a concurrent commit's new files might match fails validation
(`ValidationException`, serializable isolation). Both exceptions guarantee that nothing of the attempt
landed, so the writer may refresh and apply the same change again; many writers doing so at once need
some spread, hence the jittered exponential wait.
"""

from __future__ import annotations

import random
import time
from datetime import datetime

from pyiceberg import table as pyiceberg_table
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.update import (
    TableUpdate,
    _apply_table_update,
    _TableMetadataUpdateContext,
    _update_table_metadata_log,
)
from pyiceberg.utils.datetime import datetime_to_millis

CONFLICTS = (CommitFailedException, ValidationException)
# The snapshot property naming the ledger batch a commit loaded: a run redoing a batch finds the commit it
# already made, and a restore names the batches it undoes.
BATCH_PROPERTY = "medlake.batch"
REDO_ATTEMPTS = 10


def wait_before_redo(attempt: int) -> None:
    """Sleep 50-200 ms, doubling per attempt up to 32x, at random so colliding writers drift apart."""
    time.sleep(random.uniform(0.05, 0.2) * 2 ** min(attempt, 5))


def apply_updates(
    base: TableMetadata, updates: tuple[TableUpdate, ...], metadata_location: str | None = None
) -> TableMetadata:
    """pyiceberg's `update_table_metadata` (an existing table's) without its last step, a deep copy of the
    whole result, every snapshot and summary included: what a commit cost grew with the table's history.

    Each update already returns new metadata sharing what it did not change (pydantic `model_copy` with
    the changed fields, new lists and dicts for them), and the metadata is frozen: the copy only guarded
    against code changing a list in place, which neither pyiceberg's updates nor the lake's do. Tested
    equal to pyiceberg's for every kind of change the lake commits (`lake/test_commits.py`).
    """
    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes():
        if metadata_location:
            metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
        if base.last_updated_ms == metadata.last_updated_ms:
            now = datetime_to_millis(datetime.now().astimezone())
            metadata = metadata.model_copy(update={"last_updated_ms": now})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


class Transaction(pyiceberg_table.Transaction):
    """pyiceberg's transaction, its `table_metadata` worked out once per state of the transaction, and
    without copying the table's history (`apply_updates`).

    pyiceberg 0.12 works it out on every read: the table's metadata with the staged updates applied, then
    deep-copied, snapshots and their summaries included, and a merge append reads it 23 times. So a commit
    cost what the table's history held, not what it changed (a table takes a commit per run, thousands a
    day). The state is the table's metadata and the staged updates (a tuple, rebound by every `_stage`):
    a new one of either is worked out anew. The same cache is proposed upstream
    (apache/iceberg-python#3784), in no release yet.
    """

    _worked_out: tuple[TableMetadata, tuple, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        worked_out = self._worked_out
        if worked_out is None or worked_out[0] is not base or worked_out[1] is not updates:
            worked_out = (base, updates, apply_updates(base, updates))
            self._worked_out = worked_out
        return worked_out[2]
