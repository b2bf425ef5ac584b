"""A benchmark reuses generated archives only if this run's password opens them: archives of another
password would all be quarantined, and the benchmark would measure an empty lake."""

from __future__ import annotations

from medlake_assets_tests.ingest.archive_builders import zip_aes
from medlake_dev.bench import reusable


def test_generated_data_is_reused_only_with_the_password_it_was_written_with(tmp_path):
    folder = tmp_path / "generated"
    archive = folder / "landing" / "lab_results" / "2026" / "12" / "05" / "F0001" / "lab.zip"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(zip_aes({"lab.csv": b"facility_id,order_id\nF0001,O1\n"}, "first-run-secret"))
    assert not reusable(folder, "first-run-secret")  # incomplete: no manifest written yet
    (folder / "manifest.json").write_text("{}")
    assert reusable(folder, "first-run-secret")
    assert not reusable(folder, "another-run-secret")
