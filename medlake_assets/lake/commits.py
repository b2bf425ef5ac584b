"""Redoing an Iceberg change that conflicted with a concurrent writer's commit.

pyiceberg 0.12 retries a commit that lost the race itself (`commit.retry.num-retries`, rebased on fresh
metadata), but an overwrite whose filter a concurrent commit's new files might match fails validation
(`ValidationException`, serializable isolation). Both exceptions guarantee that nothing of the attempt
landed, so the writer may refresh and apply the same change again; many writers doing so at once need
some spread, hence the jittered exponential wait.
"""

from __future__ import annotations

import random
import time

from pyiceberg.exceptions import CommitFailedException, ValidationException

CONFLICTS = (CommitFailedException, ValidationException)
# The snapshot property naming the ledger batch a commit loaded: a run redoing a batch finds the commit it
# already made, and a restore names the batches it undoes.
BATCH_PROPERTY = "medlake.batch"
REDO_ATTEMPTS = 10


def wait_before_redo(attempt: int) -> None:
    """Sleep 50-200 ms, doubling per attempt up to 32x, at random so colliding writers drift apart."""
    time.sleep(random.uniform(0.05, 0.2) * 2 ** min(attempt, 5))
