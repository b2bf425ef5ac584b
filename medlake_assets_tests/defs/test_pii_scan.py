"""PII never reaches logs, Dagster events or quarantine reasons: a full demo run, scanned for its patients.

A seeded generation (with planted bad files) goes through `ingest --once` (bronze, silver, encounters,
reports) inside one Dagster instance. Everything a person or a log shipper could see is collected: Python
logs at DEBUG, the process's stdout/stderr, every event log record and run record of the instance
(metadata values, error messages, run config and tags), the quarantine reason files, the ledger's and
quarantine tables' rules and reasons, `meta.quality`, and the rendered reports. The patients' values come
from the tables' `pii` columns (bronze raw strings and silver typed values) and from the raw archives
(street addresses, SSNs, phone numbers the feeds carry but no table keeps), plus the archive password.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.ingest.archives import read_members
from medlake_assets.lake import Lake
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets.serving.sql import connect
from medlake_assets_tests.lake_helpers import DAY, local_settings, open_lake
from medlake_dev.generate import write_feeds

pytestmark = pytest.mark.e2e

GENERATION = {"facilities": 3, "archives": 30, "seed": 23, "bad_rate": 0.3, "day": DAY, "size_scale": 0.02}
MIN_LENGTH = 5  # shorter values (sex codes, "Zoë") match ordinary text
MIN_DIGITS = 8  # shorter numbers (postal codes) collide with counts, sizes and process ids
# The raw feeds' identifiers that no table keeps: C-CDA addresses, SSNs and phones, HL7 PID-3/PID-11.
CDA_VALUES = re.compile(
    r"<streetAddressLine>([^<]+)</streetAddressLine>"
    r"|root=\"2\.16\.840\.1\.113883\.4\.1\" extension=\"([^\"]+)\""
    r"|value=\"tel:([^\"]+)\""
)


def _meaningful(value: str) -> bool:
    value = value.strip()
    digits = value.replace("-", "")
    return len(value) >= MIN_LENGTH and (not digits.isdigit() or len(digits) >= MIN_DIGITS)


def table_values(lake: Lake) -> set[str]:
    """Distinct values of every `pii` column in bronze (as received) and silver (typed, as text)."""
    con = connect(lake)
    values: set[str] = set()
    for spec in lake.sources.values():
        for layer in ("bronze", "silver"):
            for column in spec.pii_columns():
                rows = con.sql(f"SELECT DISTINCT CAST({column} AS VARCHAR) FROM {layer}.{spec.name}")
                values |= {value for (value,) in rows.fetchall() if value}
    return values


def raw_archive_values(lake: Lake, manifest: dict) -> set[str]:
    """Street addresses, SSNs and phone numbers from the loaded archives (read with the real reader)."""
    store = LocalObjectStore(lake.settings.home)
    values: set[str] = set()
    for archive in manifest["archives"]:
        if archive["expect"] != "loaded" or archive["source"] not in ("adt_events", "patient_documents"):
            continue
        landing = lake.sources[archive["source"]].landing
        members = read_members(
            store.get(archive["key"]),
            name=archive["key"],
            accepted=landing.archives,
            password=landing.password.resolve(archive["facility"]),
            member_regex=landing.member_regex,
            limits=landing.limits,
        )
        for member in members:
            text = member.data.decode("latin-1")
            for segment in re.split(r"[\r\n]+", text):
                fields = segment.split("|")
                if fields[0] == "PID" and len(fields) > 11:
                    identifiers = fields[3].split("~")
                    values.add(identifiers[-1].split("^")[0])  # SSN
                    values.add(fields[11].split("^")[0])  # street
            values |= {group for match in CDA_VALUES.finditer(text) for group in match.groups() if group}
    return {value for value in values if "\\" not in value}  # HL7-escaped forms never reach the tables


def event_texts(instance: dg.DagsterInstance) -> list[str]:
    """Every run record and event log record of the instance, serialized whole, non-ASCII kept as is."""
    texts = []
    for run in instance.get_runs():
        texts.append(json.dumps(json.loads(dg.serialize_value(run)), ensure_ascii=False))
        for record in instance.all_logs(run.run_id):
            texts.append(json.dumps(json.loads(dg.serialize_value(record)), ensure_ascii=False))
    return texts


def quarantine_texts(lake: Lake) -> list[str]:
    """Reason files of quarantined archives, ledger and quarantine-table rules and reasons, meta.quality."""
    home = lake.settings.home
    texts = [path.read_text() for path in sorted((home / "quarantine").rglob("*.reason.json"))]
    con = connect(lake)
    queries = ["SELECT rule, reason FROM meta.files", "SELECT * FROM meta.quality"]
    queries += [f"SELECT stage, rule, reason FROM quarantine.{name}" for name in lake.sources]
    for query in queries:
        texts += [" | ".join(map(str, row)) for row in con.sql(query).fetchall()]
    return texts


def leaks(texts: list[str], values: set[str]) -> set[str]:
    """The values found in `texts`; numbers only where they are not part of a longer number."""
    blob = "\n".join(texts)
    found = set()
    for value in values:
        if value.replace("-", "").isdigit():
            if re.search(rf"(?<![0-9]){re.escape(value)}(?![0-9])", blob):
                found.add(value)
        elif value in blob:
            found.add(value)
    return found


def test_no_pii_in_logs_events_or_quarantine_reasons(
    tmp_path: Path, archive_password: str, caplog: pytest.LogCaptureFixture, capfd, monkeypatch
) -> None:
    # Parse in this process, so that the archive and parser code's own logging reaches caplog too.
    monkeypatch.setenv("MEDLAKE_INGEST_WORKERS", "1")
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    manifest = write_feeds(home, **GENERATION)
    assert manifest["bad_files"], "the generation plants bad files, so quarantine reasons are scanned"
    settings = local_settings(home)
    lake = open_lake(settings)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(defs, instance, lake)
        assert summary.runs > 0 and summary.failed_runs == 0
        events = event_texts(instance)

        records = [f"{record.name} {record.levelname} {record.getMessage()}" for record in caplog.records]
        captured = capfd.readouterr()
        pages = [*(home / "reports").rglob("*.html"), *(home / "customers").rglob("*.html")]
        assert any(home / "customers" in page.parents for page in pages)  # the customers' pages too
        reports = [path.read_text() for path in sorted(pages)]
        texts = [
            *events,
            *records,
            caplog.text,
            captured.out,
            captured.err,
            *quarantine_texts(lake),
            *reports,
        ]
        rows_in_quarantine = sum(
            connect(lake).sql(f"SELECT count(*) FROM quarantine.{name}").fetchone()[0]
            for name in lake.sources
        )
        assert len(events) > 100 and rows_in_quarantine > 0
        # Both channels were really captured: the sensor's line on the console, run events in the instance.
        assert caplog.records and "new archives" in captured.err
        assert any("STEP_SUCCESS" in text for text in events)

        patients = {value for value in table_values(lake) if _meaningful(value)}
        raw = {value for value in raw_archive_values(lake, manifest) if _meaningful(value)}
        assert len(patients) >= 300, len(patients)
        assert len(raw) >= 100, len(raw)
        values = patients | raw | {archive_password}
        found = leaks(texts, values)
        # Counts only: the assertion message must not print the values it found.
        assert not found, f"{len(found)} of {len(values)} patient values appear in logs, events or reasons"

        # The scanner finds a value where it would leak: a log line, stderr, Dagster metadata (non-ASCII).
        name = next(value for value in sorted(patients) if not value.isascii())
        patient_id = next(value for value in sorted(patients) if value.isdigit())
        logging.getLogger("medlake_assets.selfcheck").debug("row for patient %s", patient_id)

        @dg.asset
        def leaky() -> dg.MaterializeResult:
            return dg.MaterializeResult(metadata={"family": name})

        assert dg.materialize([leaky], instance=instance).success
        print(f"street {sorted(raw)[0]}")
        leaked = [caplog.text, *event_texts(instance), capfd.readouterr().out]
        assert leaks(leaked, values) == {name, patient_id, sorted(raw)[0]}
