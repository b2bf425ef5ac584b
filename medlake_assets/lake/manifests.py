"""Manifests merged as commits add them: scans and commits open a few manifests, not one per commit made.

Every Iceberg commit writes a manifest (the files it added). Planning a scan, and every overwrite, opens
each manifest of the current snapshot: on the loopback S3 about 11 ms apiece, 2.4 s per scan after 200
appends (docs/benchmarks.md), and a table taking a commit per run never stops growing. Iceberg's Java
writers merge small manifests by default (`commit.manifest-merge.enabled`); pyiceberg 0.12 honours the
property in appends only. `merging_overwrite` brings the same merge to overwrites (silver merges, replaced
batches, compaction), with pyiceberg's own merge manager, as its merge append does. The same overwrite
also judges each manifest by its own partitions when pyiceberg's threads judge several at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from pyiceberg.manifest import ManifestContent, ManifestFile
from pyiceberg.table import TableProperties, Transaction
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
from pyiceberg.utils.properties import property_as_bool, property_as_int

MERGE_PROPERTIES = {
    TableProperties.MANIFEST_MERGE_ENABLED: "true",
    # The newest manifests are merged once there are 16 (Java's default is 100): a scan opens at most about
    # 16 small manifests plus the merged ones (8 MiB each, `commit.manifest.target-size-bytes`).
    TableProperties.MANIFEST_MIN_MERGE_COUNT: "16",
}


class _MergingOverwrite(_OverwriteFiles):
    """pyiceberg's overwrite, its data manifests merged as `_MergeAppendFiles` merges an append's (the
    table's merge properties; the deleted entries of this commit kept, older ones dropped)."""

    def _build_manifest_evaluator(self, spec_id: int) -> Callable[[ManifestFile], bool]:
        """pyiceberg's, one per thread. Its evaluator keeps the manifest being judged on itself, and the
        overwrite's `_deleted_entries` calls one from its thread pool for every manifest: a manifest was
        then judged by another's partitions, its replaced file not found, and the commit refused with
        "Missing required files to delete" (`lake/test_manifests.py` failed so about one run in twenty)."""
        build = super()._build_manifest_evaluator
        own = threading.local()

        def evaluate(manifest: ManifestFile) -> bool:
            if not hasattr(own, "evaluate"):
                own.evaluate = build(spec_id)
            return own.evaluate(manifest)

        return evaluate

    def _process_manifests(self, manifests: list[ManifestFile]) -> list[ManifestFile]:
        properties, names = self._transaction.table_metadata.properties, TableProperties
        merger = _ManifestMergeManager(
            target_size_bytes=property_as_int(  # type: ignore[arg-type]
                properties, names.MANIFEST_TARGET_SIZE_BYTES, names.MANIFEST_TARGET_SIZE_BYTES_DEFAULT
            ),
            min_count_to_merge=property_as_int(  # type: ignore[arg-type]
                properties, names.MANIFEST_MIN_MERGE_COUNT, names.MANIFEST_MIN_MERGE_COUNT_DEFAULT
            ),
            merge_enabled=property_as_bool(
                properties, names.MANIFEST_MERGE_ENABLED, names.MANIFEST_MERGE_ENABLED_DEFAULT
            ),
            snapshot_producer=self,
        )
        data = [manifest for manifest in manifests if manifest.content == ManifestContent.DATA]
        deletes = [manifest for manifest in manifests if manifest.content != ManifestContent.DATA]
        return merger.merge_manifests(data) + deletes


def merging_overwrite(transaction: Transaction, properties: Mapping[str, str]) -> _OverwriteFiles:
    """An overwrite snapshot of `transaction` (as `transaction.update_snapshot().overwrite()`) that merges
    manifests when the table's properties say so."""
    first = transaction.table_metadata.current_snapshot() is None
    return _MergingOverwrite(
        operation=Operation.APPEND if first else Operation.OVERWRITE,
        transaction=transaction,
        io=transaction._table.io,
        snapshot_properties=dict(properties),
    )
