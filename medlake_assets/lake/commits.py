"""Committing to Iceberg tables: a transaction that works out the table's metadata once per change, and
redoing a change that conflicted with a concurrent writer's commit.

pyiceberg 0.12 retries a commit that lost the race itself (`commit.retry.num-retries`, rebased on fresh
metadata), but an overwrite whose filter a concurrent commit's new files might match fails validation
(`ValidationException`, serializable isolation). Both exceptions guarantee that nothing of the attempt
landed, so the writer may refresh and apply the same change again; many writers doing so at once need
some spread, hence the jittered exponential wait.
"""

from __future__ import annotations

import random
import time

from pyiceberg import table as pyiceberg_table
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.table.metadata import TableMetadata

CONFLICTS = (CommitFailedException, ValidationException)
# The snapshot property naming the ledger batch a commit loaded: a run redoing a batch finds the commit it
# already made, and a restore names the batches it undoes.
BATCH_PROPERTY = "medlake.batch"
REDO_ATTEMPTS = 10


def wait_before_redo(attempt: int) -> None:
    """Sleep 50-200 ms, doubling per attempt up to 32x, at random so colliding writers drift apart."""
    time.sleep(random.uniform(0.05, 0.2) * 2 ** min(attempt, 5))


class Transaction(pyiceberg_table.Transaction):
    """pyiceberg's transaction, its `table_metadata` worked out once per state of the transaction.

    pyiceberg 0.12 works it out on every read: the table's metadata with the staged updates applied, then
    deep-copied, snapshots and their summaries included, and a merge append reads it 23 times. So a commit
    cost what the table's history held, not what it changed (a table takes a commit per run, thousands a
    day): 0.85 s at 600 snapshots, 0.15 s through this (`medlake bench commits`). The state is the table's
    metadata and the staged updates (a tuple, rebound by every `_stage`): a new one of either is worked
    out anew. The same cache is proposed upstream (apache/iceberg-python#3784), in no release yet.
    """

    _worked_out: tuple[TableMetadata, tuple, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        worked_out = self._worked_out
        if worked_out is None or worked_out[0] is not base or worked_out[1] is not updates:
            worked_out = (base, updates, super().table_metadata)
            self._worked_out = worked_out
        return worked_out[2]
