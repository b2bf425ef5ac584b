"""The worker processes that parse a batch's archives in parallel, kept warm between batches of a run."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import pyarrow as pa

from medlake_assets.ingest.pipeline import ArchiveResult, ArchiveWork, process_work

IN_PROCESS_BYTES = 4 * 1024**2
"""With a sink, an archive this large (compressed) is parsed in the calling process, piece by piece, rather
than in a pool worker that would hold its whole parse and send it back pickled."""

ArchiveSink = Callable[[ArchiveWork, pa.Table], None]


def ingest_workers() -> int:
    """Worker processes for archives: `MEDLAKE_INGEST_WORKERS`, default one per CPU; 1 = in process."""
    configured = os.environ.get("MEDLAKE_INGEST_WORKERS", "").strip()
    workers = int(configured) if configured else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"MEDLAKE_INGEST_WORKERS must be at least 1, got {configured!r}")
    return workers


_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _init_worker() -> None:
    # Each worker is one of the CPUs: Polars' own thread pool would only contend with the other workers.
    os.environ["POLARS_MAX_THREADS"] = "1"
    # An idle spawned worker never notices its parent being killed (it holds its own end of the task queue):
    # leave when the parent is gone rather than linger forever.
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """The process's pool, started on first use and kept for later batches (spawned: no forked threads)."""
    global _pool, _pool_size
    if _pool is None or _pool_size != workers:
        if _pool is not None:
            _pool.shutdown()
        _pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker)
        _pool_size = workers
    return _pool


def process_archives(
    work: Iterable[ArchiveWork], *, workers: int | None = None, sink: ArchiveSink | None = None
) -> Iterator[tuple[ArchiveWork, ArchiveResult]]:
    """Each item of `work` with its `process_archive` result, in input order, on `workers` processes.

    `workers` defaults to `ingest_workers()`. At most eight archives per worker are in flight: enough that
    one slow archive at the head does not idle the others, few enough that a batch's bytes are not all held.

    With a `sink`, every archive's records go to `sink(item, table)` instead of its result's `table`, in
    input order, before the result is yielded: piece by piece for archives parsed in this process (all of
    them with one worker; with more, those of `IN_PROCESS_BYTES` or more, after the pool's earlier ones).
    """
    workers = ingest_workers() if workers is None else workers

    def here(item: ArchiveWork) -> ArchiveResult:
        return process_work(item, (lambda piece: sink(item, piece)) if sink is not None else None)

    def handed_over(item: ArchiveWork, result: ArchiveResult) -> ArchiveResult:
        if sink is not None and result.table is not None:
            if result.records:
                sink(item, result.table)
            result.table = None
        return result

    if workers == 1:
        yield from ((item, here(item)) for item in work)
        return
    pool = _worker_pool(workers)
    pending: deque[tuple[ArchiveWork, Future[ArchiveResult]]] = deque()
    try:
        for item in work:
            if sink is not None and len(item.data) >= IN_PROCESS_BYTES:
                while pending:
                    done, future = pending.popleft()
                    yield done, handed_over(done, future.result())
                yield item, here(item)
                continue
            pending.append((item, pool.submit(process_work, item)))
            if len(pending) >= 8 * workers:
                done, future = pending.popleft()
                yield done, handed_over(done, future.result())
        while pending:
            done, future = pending.popleft()
            yield done, handed_over(done, future.result())
    except BrokenProcessPool:
        _discard_pool()
        raise
    finally:
        for _, future in pending:
            future.cancel()


def _discard_pool() -> None:
    """Forget a broken pool (a worker died) so that the next batch starts a fresh one."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
    _pool = None
