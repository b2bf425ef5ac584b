"""Benchmarks on production-shaped data, each against a baseline measured in the same run."""

from __future__ import annotations

from pathlib import Path


def reusable(generated: Path, password: str) -> bool:
    """Whether an earlier run's generated data can be measured again: complete (its manifest written last)
    and encrypted with this run's `MEDLAKE_ARCHIVE_PASSWORD`. With another password every zip would be
    quarantined at landing, and the benchmark would measure little more than the gzip files."""
    from medlake_assets.ingest.archives import decrypt_floor
    from medlake_assets.ingest.types import ArchiveRejected

    if not (generated / "manifest.json").exists():
        return False
    sample = min(generated.glob("landing/**/*.zip"), key=lambda path: path.stat().st_size, default=None)
    if sample is None:
        return True
    try:
        decrypt_floor(sample.read_bytes(), password=password)
    except ArchiveRejected:
        return False
    return True
