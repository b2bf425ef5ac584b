"""`Ledger.batch_lock`: a second holder of the same batch waits for the first; other batches do not."""

from __future__ import annotations

import subprocess
import sys
import threading

from medlake_assets.lake.ledger import Ledger
from medlake_assets_tests.faults.conftest import new_database

HOLD = """
import sys
from medlake_assets.lake.ledger import Ledger
with Ledger(sys.argv[1]).batch_lock(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


def assert_waits_for_holder(ledger: Ledger, hold, release) -> None:
    """`hold()` takes batch b1 elsewhere; taking b1 here must wait until `release()`, b2 must not wait."""
    hold()
    released = threading.Event()
    with ledger.batch_lock("b2"):
        pass  # another batch: not blocked by the holder
    releaser = threading.Timer(0.5, lambda: (released.set(), release()))
    releaser.start()
    try:
        with ledger.batch_lock("b1"):
            assert released.is_set(), "took the batch while another process held it"
    finally:
        releaser.join()


def test_batch_lock_on_sqlite_waits_for_another_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    ledger = Ledger(url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, "b1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert_waits_for_holder(
            ledger, hold=lambda: holder.stdout.readline(), release=lambda: holder.stdin.close()
        )
    finally:
        holder.wait(timeout=30)


def test_batch_lock_on_postgres_waits_for_another_session(postgres_server):
    ledger = Ledger(new_database(postgres_server))
    holder_ready, holder_release, holder_done = threading.Event(), threading.Event(), threading.Event()

    def hold_in_other_session() -> None:
        with Ledger(ledger.url).batch_lock("b1"):
            holder_ready.set()
            holder_release.wait(timeout=30)
        holder_done.set()

    thread = threading.Thread(target=hold_in_other_session)
    thread.start()
    try:
        assert_waits_for_holder(
            ledger, hold=lambda: holder_ready.wait(timeout=30), release=holder_release.set
        )
    finally:
        holder_release.set()
        thread.join(timeout=30)
    assert holder_done.is_set()


def test_batch_lock_dies_with_its_holder(tmp_path):
    """A SIGKILLed holder leaves nothing locked (a killed worker never blocks its batch's retry)."""
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    ledger = Ledger(url)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, url, "b1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with ledger.batch_lock("b1"):  # the kernel dropped the dead holder's lock
        pass
