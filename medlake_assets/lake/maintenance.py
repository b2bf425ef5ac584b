"""Table maintenance and recovery as pure functions over one Iceberg table (design.md section 5).

- `compact_table`: pyiceberg 0.12 has no rewrite-data-files action, so small data files are rewritten here.
  Per partition with at least `min_small_files` files under `small_file_bytes`, the small files are cut
  into bins of at most `target_file_bytes`, each bin streamed into one new file (one input file read at a
  time, written a record batch at a time), and one overwrite snapshot removes exactly those files and adds
  the new ones. This is the commit pyiceberg's own copy-on-write delete makes
  (`delete_data_file` + `append_data_file` on an overwrite snapshot), so rows appended to the partition
  meanwhile are never touched. The commit goes through the `Table` the files were planned from: pyiceberg
  then validates, against every commit since, that the rewritten files still exist and (serializable
  isolation, its default) that nothing was added to the partition; on a conflict the partition is
  planned again from the new state, and given up after `attempts`.
- `expire_snapshots`: drops snapshots outside the retention window, keeping every snapshot that was
  current at some moment inside it, so `as_of` any time in the window still resolves.
- `remove_orphan_files`: deletes files under the table location that neither the current metadata nor any
  retained snapshot references and that are older than a safety age (in-flight writes are never touched).
- `restore_table`: points the table back at an earlier snapshot (metadata only; the restore is appended
  to the table's history, so time travel to just before it still shows what it undid).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce
from urllib.parse import urlparse

import polars as pl
import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, Or
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import ArrowScan, _to_requested_schema
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.schema import sanitize_column_names
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.typedef import Record

from medlake_assets.errors import MedlakeError
from medlake_assets.lake.commits import BATCH_PROPERTY
from medlake_assets.lake.manifests import merging_overwrite
from medlake_assets.lake.objectstore import ObjectStore, S3ObjectStore, open_store
from medlake_assets.lake.partitions import parse_partition, partition_by_of, touched_partitions
from medlake_assets.spec import SourceSpec
from medlake_assets.spec.models import RetentionSpec

MAINTENANCE_PROPERTY = "medlake.maintenance"
MIB = 1024 * 1024
# Older than any write in flight: a commit writes its files and metadata within minutes.
DEFAULT_ORPHAN_AGE = timedelta(days=3)
SOURCE_NAMESPACES = ("bronze", "silver", "quarantine")


class RestoreError(MedlakeError, ValueError):
    """A restore target that names no snapshot of the table (unknown, expired, or before the table)."""


@dataclass(frozen=True)
class CompactionPolicy:
    small_file_bytes: int = 32 * MIB
    """Data files below this size are candidates for rewriting."""
    min_small_files: int = 5
    """A partition is compacted when it has at least this many small files."""
    target_file_bytes: int = 128 * MIB
    """Small files are rewritten in bins of at most this many (Parquet) bytes, a file per bin."""


DEFAULT_POLICY = CompactionPolicy()


@dataclass(frozen=True)
class PartitionFiles:
    """The small data files of one partition, as planned from one snapshot."""

    spec_id: int
    partition: Record
    tasks: tuple[FileScanTask, ...]

    @property
    def key(self) -> tuple[int, Record]:
        return self.spec_id, self.partition


@dataclass
class CompactionResult:
    table: str
    files_before: int = 0
    files_after: int = 0
    partitions_compacted: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    rows_rewritten: int = 0
    conflicts: int = 0
    """Partitions given up because concurrent commits kept changing them (compacted on a later run)."""


@dataclass
class ExpiryResult:
    table: str
    snapshots_before: int = 0
    expired: list[int] = field(default_factory=list)


@dataclass
class OrphanResult:
    table: str
    files_listed: int = 0
    orphans: list[str] = field(default_factory=list)
    """Keys relative to the table location."""
    orphan_bytes: int = 0
    kept_young: int = 0
    """Unreferenced files younger than the safety age (possibly a write in flight): left alone."""


@dataclass(frozen=True)
class RestoreResult:
    table: str
    from_snapshot_id: int | None
    to_snapshot_id: int
    undone_batches: list[str]
    """`medlake.batch` ids of the snapshots the restore took out of the table's lineage."""
    seconds: float


@dataclass
class MaintenanceResult:
    compaction: CompactionResult
    expiry: ExpiryResult
    orphans: OrphanResult
    seconds: float = 0.0


def _data_files(table: Table) -> list[FileScanTask]:
    return list(table.scan().plan_files()) if table.current_snapshot() else []


def plan_compaction(table: Table, policy: CompactionPolicy = DEFAULT_POLICY) -> list[PartitionFiles]:
    """The partitions of the current snapshot worth compacting, with their small files (smallest first).

    Only files of the current partition spec are taken (the rewrite writes with it), and a partition with
    row-level delete files is left alone (medlake writes copy-on-write, so none are expected).
    """
    spec_id = table.spec().spec_id
    by_partition: dict[Record, list[FileScanTask]] = {}
    with_deletes: set[Record] = set()
    for task in _data_files(table):
        if task.file.spec_id != spec_id:
            continue
        if task.delete_files:
            with_deletes.add(task.file.partition)
        if task.file.file_size_in_bytes < policy.small_file_bytes:
            by_partition.setdefault(task.file.partition, []).append(task)
    return [
        PartitionFiles(spec_id, partition, tuple(sorted(tasks, key=lambda t: t.file.file_size_in_bytes)))
        for partition, tasks in by_partition.items()
        if len(tasks) >= policy.min_small_files and partition not in with_deletes
    ]


def _bins(tasks: Sequence[FileScanTask], target_bytes: int) -> Iterator[list[FileScanTask]]:
    """Consecutive groups of files of at most `target_bytes` each (a file larger than that alone)."""
    current: list[FileScanTask] = []
    size = 0
    for task in tasks:
        if current and size + task.file.file_size_in_bytes > target_bytes:
            yield current
            current, size = [], 0
        current.append(task)
        size += task.file.file_size_in_bytes
    if current:
        yield current


def _partition_scope(table: Table, rows: pa.Table) -> BooleanExpression:
    """A row filter covering the partition of `rows`: it scopes pyiceberg's conflict checks to it."""
    partition_by = partition_by_of(table)
    if not partition_by:
        return AlwaysTrue()
    columns = list(dict.fromkeys(parse_partition(field)[1] for field in partition_by))
    return touched_partitions(pl.from_arrow(rows.select(columns)), partition_by)


def _delete_files(table: Table, data_files: Sequence[DataFile]) -> None:
    for data_file in data_files:
        table.io.delete(data_file.file_path)


def _rewrite_bin(
    table: Table, group: Sequence[FileScanTask], write_uuid: uuid.UUID, number: int
) -> tuple[DataFile, pa.Table] | None:
    """One data file with the rows of `group` (files of one partition) and one of its rows (its partition's
    values), or None for no rows. Written a record batch at a time, one input file read at a time: a bin of
    128 MiB of Parquet is gigabytes in Arrow (12.6 GB for bronze.lab_results in the soak when read whole).
    """
    metadata = table.metadata
    schema = metadata.schema()
    file_schema = sanitize_column_names(schema)  # as pyiceberg's own writer names the file's columns
    reader = ArrowScan(metadata, table.io, schema, AlwaysTrue())
    folder = group[0].file.file_path.rsplit("/", 1)[0]  # the partition's folder, as pyiceberg laid it out
    path = f"{folder}/{number:05d}-{write_uuid}-compacted.parquet"
    output = table.io.new_output(path)
    parquet = FileFormatFactory.get(FileFormat.PARQUET)
    writer = parquet.create_writer(output, file_schema, metadata.properties)
    sample = None
    try:
        for task in group:
            for batch in reader.to_record_batches([task]):
                if not batch.num_rows:
                    continue
                if sample is None:
                    sample = pa.Table.from_batches([batch.slice(0, 1)])
                rows = _to_requested_schema(
                    file_schema, schema, batch, include_field_ids=True, format_model=parquet
                )
                writer.write(pa.Table.from_batches([rows]))
        if sample is None:
            return None
        statistics = writer.close()
    except BaseException:
        if sample is not None:  # the file was opened: close it and take it away again
            with contextlib.suppress(Exception):
                writer.close()
            with contextlib.suppress(FileNotFoundError):
                table.io.delete(path)
        raise
    data_file = DataFile.from_args(
        content=DataFileContent.DATA,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=group[0].file.partition,
        file_size_in_bytes=len(output),
        sort_order_id=None,
        spec_id=group[0].file.spec_id,
        equality_ids=None,
        key_metadata=None,
        **statistics.to_serialized_dict(),
    )
    return data_file, sample


def rewrite_partition(
    table: Table, planned: PartitionFiles, policy: CompactionPolicy = DEFAULT_POLICY
) -> tuple[int, int]:
    """Rewrite the planned small files of one partition in one commit; (files written, rows rewritten).

    Commits through `table`, the object the files were planned from. Raises pyiceberg's
    `ValidationException` or `CommitFailedException` when a concurrent commit changed the partition; the
    files written for the failed attempt are deleted again.
    """
    properties = {MAINTENANCE_PROPERTY: "compaction"}
    transaction = table.transaction()
    rewrite = merging_overwrite(transaction, properties)
    written: list[DataFile] = []
    rows_rewritten, scopes = 0, []
    try:
        for number, group in enumerate(_bins(planned.tasks, policy.target_file_bytes)):
            expected = sum(task.file.record_count for task in group)
            rewritten = _rewrite_bin(table, group, rewrite.commit_uuid, number)
            if rewritten is not None:
                written.append(rewritten[0])
            read = rewritten[0].record_count if rewritten else 0
            if read != expected:  # checked for a bin read empty too: its files are deleted below
                raise ValueError(
                    f"table {'.'.join(table.name())}: read {read} rows from files holding {expected}"
                )
            if rewritten is not None:
                scopes.append(_partition_scope(table, rewritten[1]))
                rows_rewritten += read
        if scopes:  # scopes pyiceberg's conflict checks to the partition (no rows: to no partition)
            rewrite.delete_by_predicate(reduce(Or, scopes))
        for task in planned.tasks:
            rewrite.delete_data_file(task.file)
        for data_file in written:
            rewrite.append_data_file(data_file)
        rewrite.commit()
    except BaseException:
        _delete_files(table, written)
        raise
    try:
        transaction.commit_transaction()
    except (CommitFailedException, ValidationException):
        # The commit surely did not land (any other error may hide one that did: then keep the files).
        _delete_files(table, written)
        raise
    return len(written), rows_rewritten


def compact_table(
    table: Table,
    policy: CompactionPolicy = DEFAULT_POLICY,
    *,
    dry_run: bool = False,
    attempts: int = 3,
) -> CompactionResult:
    """Rewrite the small files of every partition that has too many; see the module docstring."""
    result = CompactionResult(".".join(table.name()))
    result.files_before = len(_data_files(table))
    planned = plan_compaction(table, policy)
    if dry_run:
        result.partitions_compacted = len(planned)
        result.files_rewritten = sum(len(p.tasks) for p in planned)
        result.files_after = result.files_before
        return result
    for partition in planned:
        current: PartitionFiles | None = partition
        for _ in range(attempts):
            try:
                files_written, rows = rewrite_partition(table, current, policy)
            except (CommitFailedException, ValidationException):
                table = table.refresh()
                current = next((p for p in plan_compaction(table, policy) if p.key == partition.key), None)
                if current is None:
                    break  # nothing left to compact there (e.g. a concurrent rewrite)
                continue
            result.partitions_compacted += 1
            result.files_rewritten += len(current.tasks)
            result.files_written += files_written
            result.rows_rewritten += rows
            break
        else:
            result.conflicts += 1
    result.files_after = len(_data_files(table.refresh()))
    return result


def retention_for(table_name: str, sources: dict[str, SourceSpec]) -> RetentionSpec:
    """A source's tables (`bronze|silver|quarantine.<source>`) use its `retention`; others the default."""
    namespace, _, name = table_name.partition(".")
    if namespace in SOURCE_NAMESPACES and name in sources:
        return sources[name].retention
    return RetentionSpec()


def snapshots_to_expire(table: Table, retention: RetentionSpec, now: datetime) -> list[int]:
    """Snapshots no time travel inside the window can reach, oldest first.

    Kept: the current snapshot and every branch or tag head; the newest `min_snapshots`; every snapshot
    committed or made current (e.g. by a restore) inside the window; and the one that was current when
    the window opened, so `as_of` the window's first moment still has its snapshot.
    """
    metadata = table.metadata
    cutoff_ms = int((now - timedelta(days=retention.snapshot_days)).timestamp() * 1000)
    keep = {ref.snapshot_id for ref in metadata.refs.values()}
    if metadata.current_snapshot_id is not None:
        keep.add(metadata.current_snapshot_id)
    newest = sorted(metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    keep.update(s.snapshot_id for s in newest[: retention.min_snapshots])
    keep.update(s.snapshot_id for s in metadata.snapshots if s.timestamp_ms >= cutoff_ms)
    history = sorted(metadata.snapshot_log, key=lambda entry: entry.timestamp_ms)
    keep.update(entry.snapshot_id for entry in history if entry.timestamp_ms > cutoff_ms)
    current_at_cutoff = [entry for entry in history if entry.timestamp_ms <= cutoff_ms]
    if current_at_cutoff:
        keep.add(current_at_cutoff[-1].snapshot_id)
    expired = [s for s in metadata.snapshots if s.snapshot_id not in keep]
    return [s.snapshot_id for s in sorted(expired, key=lambda s: s.timestamp_ms)]


def expire_snapshots(
    table: Table,
    retention: RetentionSpec,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    attempts: int = 3,
) -> ExpiryResult:
    """Remove the snapshots `snapshots_to_expire` names (metadata only: their files become orphans)."""
    now = now or datetime.now(UTC)
    result = ExpiryResult(".".join(table.name()), snapshots_before=len(table.metadata.snapshots))
    for attempt in range(attempts):
        expired = snapshots_to_expire(table, retention, now)
        if not expired or dry_run:
            result.expired = expired
            return result
        try:
            table.maintenance.expire_snapshots().by_ids(expired).commit()
        except CommitFailedException:
            # pyiceberg does not retry metadata-only commits; re-plan against the new state.
            if attempt == attempts - 1:
                raise
            table = table.refresh()
            continue
        result.expired = expired
        return result
    raise AssertionError("unreachable")


def location_store(location: str, s3_endpoint_url: str | None = None) -> ObjectStore:
    """The object store rooted at a table location (`file://...` or `s3://bucket/prefix`)."""
    parsed = urlparse(location)
    if parsed.scheme in ("s3", "s3a"):
        return S3ObjectStore(parsed.netloc, parsed.path, endpoint_url=s3_endpoint_url)
    return open_store(location)


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata reaches: metadata files in its log, statistics, and each retained
    snapshot's manifest list, manifests and live data and delete files."""
    metadata = table.metadata
    paths = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    paths.update(statistics.statistics_path for statistics in metadata.statistics)
    paths.update(statistics.statistics_path for statistics in metadata.partition_statistics)
    manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in manifests:
                continue
            manifests.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                paths.add(entry.data_file.file_path)
    return paths | manifests


def remove_orphan_files(
    table: Table,
    *,
    min_age: timedelta = DEFAULT_ORPHAN_AGE,
    now: datetime | None = None,
    s3_endpoint_url: str | None = None,
    dry_run: bool = False,
) -> OrphanResult:
    """Delete files under the table location that nothing references and that are older than `min_age`.

    References are read from the table's latest metadata; a file written after that is younger than
    `min_age` and so never a candidate.
    """
    now = now or datetime.now(UTC)
    table = table.refresh()
    location = table.location().rstrip("/")
    prefix = f"{location}/"
    referenced = {path[len(prefix) :] for path in referenced_files(table) if path.startswith(prefix)}
    result = OrphanResult(".".join(table.name()))
    for info in location_store(location, s3_endpoint_url).list():
        result.files_listed += 1
        if info.key in referenced:
            continue
        if info.last_modified > now - min_age:
            result.kept_young += 1
            continue
        result.orphans.append(info.key)
        result.orphan_bytes += info.size
        if not dry_run:
            table.io.delete(f"{prefix}{info.key}")
    return result


def maintain_table(
    table: Table,
    *,
    retention: RetentionSpec,
    policy: CompactionPolicy = DEFAULT_POLICY,
    min_orphan_age: timedelta = DEFAULT_ORPHAN_AGE,
    now: datetime | None = None,
    s3_endpoint_url: str | None = None,
    dry_run: bool = False,
) -> MaintenanceResult:
    """Compact, expire, then remove orphans (the files compaction and expiry left unreferenced)."""
    started = time.perf_counter()
    compaction = compact_table(table, policy, dry_run=dry_run)
    expiry = expire_snapshots(table.refresh(), retention, now=now, dry_run=dry_run)
    orphans = remove_orphan_files(
        table, min_age=min_orphan_age, now=now, s3_endpoint_url=s3_endpoint_url, dry_run=dry_run
    )
    return MaintenanceResult(compaction, expiry, orphans, time.perf_counter() - started)


def restore_table(table: Table, to: int | datetime) -> RestoreResult:
    """Make `to` (a snapshot id of the table, or the snapshot current at a moment) the current snapshot.

    Metadata only, so it takes about as long as one commit whatever the table's size. Any retained
    snapshot may be the target, including one a previous restore left behind (a restore can be undone).
    """
    started = time.perf_counter()
    name = ".".join(table.name())
    if isinstance(to, datetime):
        target = table.snapshot_as_of_timestamp(int(to.timestamp() * 1000))
        if target is None:
            raise RestoreError(f"table {name} has no snapshot at or before {to.isoformat()}")
    else:
        target = table.snapshot_by_id(to)
        if target is None:
            raise RestoreError(f"table {name} has no snapshot {to} (never existed, or expired)")
    current = table.current_snapshot()
    kept = {s.snapshot_id for s in ancestors_of(target, table.metadata)}
    undone = [
        s.summary[BATCH_PROPERTY]
        for s in (ancestors_of(current, table.metadata) if current else [])
        if s.snapshot_id not in kept and s.summary is not None and s.summary[BATCH_PROPERTY]
    ]
    table.manage_snapshots().set_current_snapshot(snapshot_id=target.snapshot_id).commit()
    return RestoreResult(
        table=name,
        from_snapshot_id=current.snapshot_id if current else None,
        to_snapshot_id=target.snapshot_id,
        undone_batches=sorted(set(undone)),
        seconds=time.perf_counter() - started,
    )
