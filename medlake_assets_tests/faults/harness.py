"""What the fault tests share: landing the same feeds, running `medlake ingest --once` as a subprocess with
production settings, watching its progress in the ledger, and comparing a faulted lake with a clean one.

"Equal to a clean run" means: every bronze, silver and quarantine table holds the same rows as the same
multiset (a lost or doubled row shows up, with the archive it came from), the ledger holds the same
outcome per landed key, and `meta.quality` the same counts. Only run-specific lineage is left out:
`_ingested_at` and `_batch` (when and in which batch a row arrived), ledger ids, batch ids, timestamps and
the store's URI.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from medlake_assets.lake import Lake
from medlake_assets.lake.ledger import PENDING
from medlake_assets.lake.objectstore import ObjectStore
from medlake_assets.silver.encounters import FOLD_COLUMNS

RUN_SPECIFIC_COLUMNS = ("_ingested_at", "_batch")
LEDGER_COLUMNS = (
    "key",
    "size",
    "source",
    "facility",
    "landing_day",
    "status",
    "members",
    "records",
    "rejected_records",
    "rule",
    "reason",
    "quarantine_key",
)
QUALITY_GROUP = ("source", "stage", "landing_day", "facility", "rule", "severity")
NAMESPACES = ("bronze", "silver", "quarantine")
INGEST = [sys.executable, "-m", "medlake_assets.cli", "ingest", "--once"]


@dataclass(frozen=True)
class Feeds:
    """A generated landing tree held in memory: the same bytes land in every lake of a test."""

    objects: dict[str, bytes]
    manifest: dict
    sources_dir: Path
    password: str

    def land(self, store: ObjectStore, keys: Iterable[str] | None = None) -> None:
        for key in self.objects if keys is None else keys:
            store.put(key, self.objects[key])


def ingest_env(home: Path, feeds: Feeds, *, catalog_url: str, store_url: str, s3_endpoint: str = "") -> dict:
    """The environment of a production-shaped `medlake ingest --once`: catalog and ledger on PostgreSQL,
    landing, quarantine and warehouse in the store, its own Dagster instance under `home`.

    Gold reports are left out (an empty reports folder): they are rebuilt whole from silver by every run,
    so they add time but nothing a fault could lose or double. Archives are parsed in the run's process
    (`MEDLAKE_INGEST_WORKERS=1`): spawning a worker pool per process would double these tests' time.
    """
    no_reports = home / "no-reports"
    no_reports.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MEDLAKE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "MEDLAKE_SOURCES_DIR": str(feeds.sources_dir),
        "MEDLAKE_CATALOG_URL": catalog_url,
        "MEDLAKE_STORE_URL": store_url,
        "MEDLAKE_ARCHIVE_PASSWORD": feeds.password,
        "MEDLAKE_REPORTS_DIR": str(no_reports),
        "MEDLAKE_INGEST_WORKERS": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("MEDLAKE_PROFILE", None)  # the settings above say where everything lives, whatever the shell has
    if s3_endpoint:
        env["MEDLAKE_S3_ENDPOINT_URL"] = s3_endpoint
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    return env


def start_ingest(env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """`medlake ingest --once` in the background; its output goes to `log` (read it when a test fails)."""
    with open(log, "ab") as out:
        return subprocess.Popen(INGEST, env=dict(env), stdout=out, stderr=subprocess.STDOUT)


def run_ingest(env: Mapping[str, str], log: Path, *, timeout: float = 180) -> int:
    """`medlake ingest --once` to the end; its exit code (1 = some runs failed)."""
    process = start_ingest(env, log)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def kill(process: subprocess.Popen) -> None:
    """SIGKILL: no handler, no cleanup, as when a node or pod dies."""
    process.send_signal(signal.SIGKILL)
    process.wait()


def wait_until(
    condition: Callable[[], bool], *, timeout: float, process: subprocess.Popen | None = None, poll=0.05
) -> bool:
    """Poll `condition` until true; False on timeout or when `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(poll)
    return False


def ledger_statuses(ledger_url: str) -> Counter[str]:
    """Files per status in the ledger (empty while the table does not exist yet)."""
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT status, count(*) FROM medlake_files GROUP BY status"))
            return Counter({status: count for status, count in rows})
    except Exception:  # not created yet, or the server is away for a moment
        return Counter()
    finally:
        engine.dispose()


def files_done(ledger_url: str) -> int:
    """Ledger files loaded or quarantined: a run's progress, read from outside its process."""
    statuses = ledger_statuses(ledger_url)
    return sum(count for status, count in statuses.items() if status != PENDING)


# ---- comparing lakes ----------------------------------------------------------------------------------


def _value(value: object) -> object:
    # NaN != NaN would make equal rows unequal.
    return "NaN" if isinstance(value, float) and math.isnan(value) else value


def table_contents(lake: Lake, identifier: str) -> Counter[tuple]:
    """The table's rows without run-specific lineage, as a multiset of (column, value) tuples."""
    rows = lake.catalog.load_table(identifier).scan().to_arrow()
    # Encounters' fold state encodes its events' run-specific lineage in order keys; the encounter
    # columns folded from it are compared.
    run_specific = [
        name for name in rows.column_names if name in RUN_SPECIFIC_COLUMNS or name in FOLD_COLUMNS
    ]
    rows = rows.drop_columns(run_specific)
    names = sorted(rows.column_names)
    return Counter(tuple((name, _value(row[name])) for name in names) for row in rows.to_pylist())


def lake_contents(lake: Lake) -> dict[str, Counter[tuple]]:
    """Every bronze, silver and quarantine table, the ledger's outcome per key and the quality counts."""
    contents = {
        f"{namespace}.{name}": table_contents(lake, f"{namespace}.{name}")
        for namespace in NAMESPACES
        for _, name in lake.catalog.list_tables(namespace)
    }
    with lake.ledger.engine.connect() as connection:
        ledger = connection.execute(text(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM medlake_files"))
        contents["meta.files"] = Counter(tuple(zip(LEDGER_COLUMNS, row, strict=True)) for row in ledger.all())
        group = ", ".join(QUALITY_GROUP)
        quality = connection.execute(text(f"SELECT {group}, sum(rows) FROM medlake_quality GROUP BY {group}"))
        contents["meta.quality"] = Counter(
            tuple(zip((*QUALITY_GROUP, "rows"), (*row[:-1], int(row[-1])), strict=True))
            for row in quality.all()
        )
    return contents


def _per_archive(rows: Counter[tuple]) -> Counter[str]:
    """Rows per archive (`_archive`, the ledger's `key`; quality counts per facility and rule)."""
    counts: Counter[str] = Counter()
    for row, count in rows.items():
        values = dict(row)
        label = values.get("_archive") or values.get("key")
        if label is None:
            label = (
                f"{values.get('source')}/{values.get('stage')}/{values.get('facility')}/{values.get('rule')}"
            )
        counts[str(label)] += count
    return counts


def differences(faulted: Mapping[str, Counter], clean: Mapping[str, Counter]) -> list[str]:
    """Human-readable differences: per table, rows missing or extra, with exact counts per archive."""
    problems = []
    for table in sorted(set(faulted) | set(clean)):
        got, want = faulted.get(table, Counter()), clean.get(table, Counter())
        if got == want:
            continue
        missing, extra = want - got, got - want
        per_archive_got, per_archive_want = _per_archive(got), _per_archive(want)
        archives = sorted(set(_per_archive(missing)) | set(_per_archive(extra)))
        detail = ", ".join(
            f"{archive}: {per_archive_got[archive]} rows (clean run {per_archive_want[archive]})"
            for archive in archives[:10]
        )
        problems.append(
            f"{table}: {sum(missing.values())} rows missing, {sum(extra.values())} extra "
            f"({sum(got.values())} vs {sum(want.values())} in the clean run); {detail}"
        )
    return problems


def assert_equals_clean_run(faulted: Lake, clean: Mapping[str, Counter]) -> None:
    """The faulted lake's tables and ledger equal the clean run's: nothing lost, nothing doubled."""
    problems = differences(lake_contents(faulted), clean)
    assert not problems, "\n".join(problems)
    assert_quarantined_originals_kept(faulted)


def assert_quarantined_originals_kept(lake: Lake) -> None:
    """Every archive the ledger says was quarantined (or had records rejected) has its original bytes and
    a reason under `quarantine/`."""
    with lake.ledger.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT key, quarantine_key FROM medlake_files WHERE quarantine_key IS NOT NULL")
        ).all()
    for key, quarantine_key in rows:
        assert lake.store.get(quarantine_key) == lake.store.get(key), key
        assert lake.store.exists(f"{quarantine_key}.reason.json"), key


def pending_batches(ledger_url: str) -> int:
    """Claimed batches with a file still pending."""
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text(
                    "SELECT count(DISTINCT batch_id) FROM medlake_files "
                    "WHERE status = 'pending' AND batch_id IS NOT NULL"
                )
            ).scalar_one()
    finally:
        engine.dispose()


def fault_during_ingest(
    env: Mapping[str, str], log: Path, fault: Callable[[], None], *, after_files: int = 4
) -> int:
    """Start `medlake ingest --once`, inject `fault()` once `after_files` files are done and the process is
    still running, let the process end by itself, and return its exit code."""
    ledger_url = env["MEDLAKE_CATALOG_URL"]
    process = start_ingest(env, log)
    try:
        started = wait_until(lambda: files_done(ledger_url) >= after_files, timeout=180, process=process)
        assert started, f"ingest ended before the fault could be injected:\n{log_tail(log)}"
        fault()
        return process.wait(timeout=300)
    finally:
        if process.poll() is None:
            kill(process)
