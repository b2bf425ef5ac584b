"""Every kind of bad input, through the real sensors and runs: quarantined with a clear reason, the original
kept, the rest of its batch loaded, and no run failing."""

from __future__ import annotations

import json
from collections import defaultdict

import dagster as dg
import pytest

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.lake.objectstore import LocalObjectStore
from medlake_assets_tests.accounting import accounting_problems
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_zipcrypto
from medlake_assets_tests.lake_helpers import DAY, ledger_by_key, local_settings, open_lake, table_rows
from medlake_dev.generate import BAD_KINDS, write_feeds

PASSWORD = "synthetic-test-password"


def lake_columns(source: str) -> list[str]:
    from medlake_assets.spec import load_sources
    from medlake_assets_tests.conftest import SOURCES_DIR

    return load_sources(SOURCES_DIR)[source].column_names()


@pytest.fixture(scope="module")
def bad_lake(tmp_path_factory):
    home = tmp_path_factory.mktemp("bad") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDLAKE_ARCHIVE_PASSWORD", PASSWORD)
        manifest = write_feeds(
            home, facilities=3, archives=64, seed=21, bad_rate=0.5, day=DAY, size_scale=0.02
        )
        settings = local_settings(home)
        lake = open_lake(settings)
        with dg.instance_for_test() as instance:
            summary = ingest_once(build_definitions(settings), instance, lake)
    return lake, manifest, summary


def test_no_run_fails_on_bad_input(bad_lake):
    _, manifest, summary = bad_lake
    assert {bad["kind"] for bad in manifest["bad_files"]} == {kind.name for kind in BAD_KINDS}
    assert summary.runs > 0
    assert summary.failed_runs == 0


def test_every_landed_object_member_and_record_is_accounted_for(bad_lake):
    """The invariant over every kind of bad file the generator plants (half the archives are bad)."""
    lake, manifest, _ = bad_lake
    assert accounting_problems(lake) == []
    # The generator's own counts agree with the ledger's, source by source.
    ledger = ledger_by_key(lake)
    for entry in manifest["archives"]:
        row = ledger[entry["key"]]
        assert row["status"] == entry["expect"], entry["key"]
        if entry["expect"] == "loaded":
            assert (row["members"], row["records"], row["rejected_records"]) == (
                entry["members"],
                entry["records"],
                entry["rejected_records"],
            ), entry["key"]


@pytest.mark.parametrize("kind", [kind.name for kind in BAD_KINDS])
def test_bad_kind_is_quarantined_with_reason_and_batch_still_loads(bad_lake, kind):
    lake, manifest, _ = bad_lake
    ledger = ledger_by_key(lake)
    cases = [bad for bad in manifest["bad_files"] if bad["kind"] == kind]
    assert cases, f"the generator planned no {kind}"
    for bad in cases:
        row = ledger[bad["key"]]
        if bad.get("stage") == "silver":
            # Passes bronze, fails a silver rule: that row is quarantined with its rule, the rest lands.
            assert (row["status"], row["rule"]) == ("loaded", None)
            rejects = table_rows(lake, f"quarantine.{bad['source']}").to_pylist()
            mine = [r for r in rejects if r["_archive"] == bad["key"] and r["stage"] == "silver"]
            assert [r["rule"] for r in mine] == [bad["rule"]] * bad["rejected_records"]
            silver = table_rows(lake, f"silver.{bad['source']}").to_pylist()
            held = {(r["_member"], r["_record"]) for r in mine}
            assert not held & {(r["_member"], r["_record"]) for r in silver if r["_archive"] == bad["key"]}
            continue
        assert (row["status"], row["rule"]) == (bad["expect"], bad["rule"])
        assert row["reason"], "a clear reason is recorded"
        # The original bytes are kept beside a reason document that holds no record values.
        assert lake.store.get(row["quarantine_key"]) == lake.store.get(bad["key"])
        reason = json.loads(lake.store.get(f"{row['quarantine_key']}.reason.json"))
        assert reason["key"] == bad["key"]
        if bad["expect"] == "loaded":
            # Record-level: that record is in quarantine.<source>, the rest of the archive is in bronze.
            assert row["rejected_records"] == bad["rejected_records"] >= 1
            rejects = table_rows(lake, f"quarantine.{bad['source']}").to_pylist()
            mine = [r for r in rejects if r["_archive"] == bad["key"]]
            assert [r["rule"] for r in mine] == [bad["rule"]] * bad["rejected_records"]
            assert all(r["_member"] and r["reason"] for r in mine)
            assert row["records"] > 0
        elif bad["source"] is not None:
            # Archive-level: nothing of it in bronze, but the other archives of its batch loaded.
            bronze = table_rows(lake, f"bronze.{bad['source']}")
            assert bad["key"] not in set(bronze.column("_archive").to_pylist())
            batch = [
                r for r in ledger.values() if r["batch_id"] == row["batch_id"] and r["key"] != bad["key"]
            ]
            assert any(r["status"] == "loaded" for r in batch)


def test_awkward_but_valid_files_load_exact_values(tmp_path, monkeypatch):
    """BOM, CRLF, quoted newlines and commas, Latin-1 in CSV; mixed HL7 terminators, envelopes, 8859/1."""
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD", PASSWORD)
    home = tmp_path / "home"
    store = LocalObjectStore(home)
    header = ",".join(lake_columns("lab_results"))
    lab = (
        "\ufeff" + header + "\r\n"
        'F9,P1,O1,2345-7,"Glucose, fasting",101,mg/dL,70-99,H,F,2026-11-20T08:00:00\r\n'
        'F9,P2,O2,718-7,"Hemoglobin\r\nrepeat",13.1,g/dL,12.0-15.5,,P,2026-11-20T09:30:00\r\n'
    ).encode()
    latin1 = (header + "\nF9,P3,O3,2885-2,Protéine totale,7.1,g/dL,6.0-8.3,N,C,2026-11-20T10:00:00\n").encode(
        "latin-1"
    )
    day = f"{DAY:%Y/%m/%d}"
    store.put(f"landing/lab_results/{day}/F9/lab_1.zip", zip_zipcrypto({"a.csv": lab}, PASSWORD))
    store.put(f"landing/lab_results/{day}/F9/lab_2.csv.gz", gzip_bytes(latin1))
    hl7 = (
        "FHS|^~\\&|EHR\rBHS|^~\\&|EHR\n"
        "MSH|^~\\&|EHR|F9|LAKE|X|20261120081500||ADT^A01^ADT_A01|C1|P|2.5||||||8859/1\r"
        "PID|1||P9^^^F9^MR~S9^^^SSA^SS||Müller\\T\\Søren^Zoë||19800101|F\r\n"
        "PV1|1|I|ICU^101^B||||||||||||||||V9|||||||||||||||||||||||||20261120081500\n"
        "ZPV|custom\r"
        "BTS|1\rFTS|1\r"
    ).encode("latin-1")
    store.put(f"landing/adt_events/{day}/F9/adt_1.zip", zip_zipcrypto({"m.txt": hl7}, PASSWORD))

    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        assert ingest_once(build_definitions(settings), instance, lake).failed_runs == 0
    labs = sorted(table_rows(lake, "bronze.lab_results").to_pylist(), key=lambda r: r["order_id"])
    assert [(r["order_id"], r["test_name"], r["abnormal_flag"], r["result_status"]) for r in labs] == [
        ("O1", "Glucose, fasting", "H", "F"),
        ("O2", "Hemoglobin\r\nrepeat", None, "P"),
        ("O3", "Protéine totale", "N", "C"),
    ]
    assert labs[0]["facility_id"] == "F9" and labs[0]["_record"] == 1 and labs[1]["_record"] == 2
    (adt,) = table_rows(lake, "bronze.adt_events").to_pylist()
    assert (adt["family_name"], adt["given_name"], adt["patient_id"]) == ("Müller&Søren", "Zoë", "P9")
    assert (adt["point_of_care"], adt["room"], adt["bed"], adt["visit_number"]) == ("ICU", "101", "B", "V9")
    assert (adt["trigger_event"], adt["charset"], adt["admit_ts"]) == ("A01", "8859/1", "20261120081500")
    counts = defaultdict(int)
    for row in ledger_by_key(lake).values():
        counts[row["status"]] += 1
    assert counts == {"loaded": 3}
