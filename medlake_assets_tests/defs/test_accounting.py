"""Nothing is lost silently: through the real sensors and Dagster runs, every landed object, member and
record ends in bronze, in quarantine, or pending with a reason, and the ledger's counts add up."""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets.ingest.batch import release_holds
from medlake_assets.ingest.landing import find_strays, register_landed
from medlake_assets_tests.accounting import accounting_problems
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_aes, zip_plain, zip_zipcrypto
from medlake_assets_tests.ingest.test_accounting_fuzz import csv_member, hl7_member, xml_member
from medlake_assets_tests.lake_helpers import DAY, ledger_by_key, local_settings, open_lake, table_rows
from medlake_dev.generate import write_feeds

PASSWORD = "synthetic-test-password"
DAY_PATH = f"{DAY:%Y/%m/%d}"


def _msh(control_id: str, encoding_characters: str = "^~\\&", message_type: str = "ADT^A01^ADT_A01") -> str:
    return f"MSH|{encoding_characters}|SYNADT|F9|LAKE|X|20261120081500||{message_type}|{control_id}|P|2.5"


def _message(control_id: str, **msh: str) -> str:
    return "\r".join([_msh(control_id, **msh), "PID|1||P9^^^F9^MR||TESTPATIENT^ALPHA", "PV1|1|I|ICU^1^A"])


@pytest.fixture
def lake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD", PASSWORD)
    return tmp_path / "home"


def ingest(home) -> object:
    settings = local_settings(home)
    lake = open_lake(settings)
    with dg.instance_for_test() as instance:
        summary = ingest_once(build_definitions(settings), instance, lake, refine_silver=False)
    return lake, summary


def test_hl7_messages_with_undeclared_separators_are_quarantined_and_counted(lake_home):
    """MSH-2 `$~\\&` with `^` in the fields: today the message vanishes (ledger: loaded, 0 rejected)."""
    member = "\r".join(
        [
            _message("C1"),
            _message("C2", encoding_characters="$~\\&"),
            _message("C3", message_type="ORU^R01^ORU_R01"),
            _message("C4"),
        ]
    )
    key = f"landing/adt_events/{DAY_PATH}/F9/adt_1.zip"
    open_lake(local_settings(lake_home)).store.put(key, zip_zipcrypto({"m.hl7": member.encode()}, PASSWORD))

    lake, summary = ingest(lake_home)
    assert summary.failed_runs == 0
    assert accounting_problems(lake) == []
    row = ledger_by_key(lake)[key]
    assert (row["status"], row["members"], row["records"], row["rejected_records"]) == ("loaded", 1, 2, 2)
    bronze = table_rows(lake, "bronze.adt_events")
    assert sorted(bronze.column("message_control_id").to_pylist()) == ["C1", "C4"]
    rejects = sorted(
        (r["_record"], r["_line"], r["rule"]) for r in table_rows(lake, "quarantine.adt_events").to_pylist()
    )
    assert rejects == [(2, 4, "hl7.delimiter_mismatch"), (3, 7, "hl7.message_type_not_accepted")]


def test_a_nul_inside_a_csv_field_is_rejected_by_the_declared_rule_and_the_rest_loads(lake_home):
    header = (
        "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
        "result_status,result_ts"
    )
    rows = [f"F9,P{n},O{n},2345-7,Glucose,10{n},mg/dL,70-99,H,F,2026-11-20T08:00:00" for n in range(1, 4)]
    rows[1] = rows[1].replace("Glucose", "Gluc\x00ose")
    key = f"landing/lab_results/{DAY_PATH}/F9/lab_1.csv.gz"
    data = "\n".join([header, *rows, ""]).encode()
    open_lake(local_settings(lake_home)).store.put(key, gzip_bytes(data))

    lake, summary = ingest(lake_home)
    assert summary.failed_runs == 0
    assert accounting_problems(lake) == []
    bronze = table_rows(lake, "bronze.lab_results")
    assert sorted(bronze.column("order_id").to_pylist()) == ["O1", "O3"]
    assert not any("\x00" in (name or "") for name in bronze.column("test_name").to_pylist())
    [reject] = table_rows(lake, "quarantine.lab_results").to_pylist()
    assert (reject["_record"], reject["_line"], reject["rule"], reject["raw"]) == (
        2,
        3,
        "csv.control_character",
        None,
    )
    assert reject["reason"] == (
        "column test_name holds control character U+0000 (format.control_characters: reject)"
    )


STRAYS = {
    "landing/lab_results/2026/12/F0003/no_day.csv.gz": "landing.no_source",  # no day folder
    "landing/lab_results/2026/13/45/F0003/x.csv.gz": "landing.bad_day",  # month 13, day 45
    "landing/stray_top_level_file.csv.gz": "landing.no_source",
    "landing/lab_results/loose.csv.gz": "landing.no_source",  # beside the year folders
    "landing/lab_results/2026/11/x.csv.gz": "landing.no_source",  # beside the day folders
    "landing/lab_results/2026/11/5/F0003/x.csv.gz": "landing.no_source",  # day not written as 05
    "landing/unknown_feed/2026/11/20/F0003/x.zip": "landing.no_source",
}


class ListingRecorder:
    """The lake's store, recording every full (recursive) listing the sensors ask for."""

    def __init__(self, store):
        self.store, self.listed = store, []

    def __getattr__(self, name):
        return getattr(self.store, name)

    def list(self, prefix: str = ""):
        self.listed.append(prefix)
        return self.store.list(prefix)


def test_every_object_under_landing_is_registered_or_quarantined_with_a_reason(lake_home):
    lake = open_lake(local_settings(lake_home))
    good = f"landing/lab_results/{DAY_PATH}/F0003/good.csv.gz"
    future = "landing/lab_results/2099/01/01/F0003/future.csv.gz"
    for key in [*STRAYS, good, future]:
        lake.store.put(key, gzip_bytes(b"facility_id\nF0003\n"))

    lake, summary = ingest(lake_home)
    assert summary.failed_runs == 0
    assert accounting_problems(lake) == []
    ledger = ledger_by_key(lake)
    assert {key: (ledger[key]["status"], ledger[key]["rule"]) for key in STRAYS} == {
        key: ("quarantined", rule) for key, rule in STRAYS.items()
    }
    assert all(lake.store.exists(f"quarantine/{key}.reason.json") for key in STRAYS)
    assert ledger[good]["status"] == "quarantined"  # reached its source (csv.missing_column), not a stray
    # A day still to come is neither loaded nor lost: pending, with the reason, until that day.
    assert (ledger[future]["status"], ledger[future]["rule"]) == ("pending", "landing.future_day")


def test_the_stray_sweep_never_lists_a_day_folder_whole(lake_home):
    """Strays are found with delimiter listings of the levels above the day folders (landing/, each
    source, year and month): the history inside valid, open day folders is never listed by the sweep."""
    lake = open_lake(local_settings(lake_home))
    for key in [*STRAYS, f"landing/lab_results/{DAY_PATH}/F0003/good.csv.gz"]:
        lake.store.put(key, gzip_bytes(b"facility_id\nF0003\n"))
    recorder = ListingRecorder(lake.store)
    strays = find_strays(recorder, lake.sources.values(), today=DAY)
    assert not [prefix for prefix in recorder.listed if prefix.startswith(f"landing/lab_results/{DAY_PATH}")]
    found = {info.key for info in strays.objects}
    found |= {info.key for prefix in strays.prefixes for info in lake.store.list(prefix)}
    assert found == set(STRAYS)


def test_a_future_day_held_at_registration_is_released_when_its_day_comes(lake_home):
    lake = open_lake(local_settings(lake_home))
    future = "landing/lab_results/2099/01/01/F0003/future.csv.gz"
    lake.store.put(future, gzip_bytes(b"facility_id\nF0003\n"))
    spec = lake.sources["lab_results"]
    strays = find_strays(lake.store, lake.sources.values(), today=DAY)
    register_landed(lake.store, lake.ledger, list(lake.sources.values()), strays.prefixes, today=DAY)
    assert lake.ledger.claim_batches("lab_results", max_archives=10, max_bytes=10**9) == []
    assert release_holds(lake, spec, date(2098, 12, 31)) == 0
    assert release_holds(lake, spec, date(2099, 1, 1)) == 1
    [batch] = lake.ledger.claim_batches("lab_results", max_archives=10, max_bytes=10**9)
    assert batch.landing_day == date(2099, 1, 1)


def test_a_restored_lake_folder_reloads_nothing(tmp_path, lake_home):
    """The local store's identity of an archive is its content: restoring the lake folder from a copy (new
    inodes and modification times) and ingesting again loads, reruns and registers nothing."""
    write_feeds(lake_home, facilities=2, archives=12, seed=5, bad_rate=0.2, day=DAY, size_scale=0.02)
    lake, summary = ingest(lake_home)
    assert summary.runs > 0 and summary.failed_runs == 0
    before = ledger_by_key(lake)
    tables = ("bronze.lab_results", "bronze.adt_events")
    snapshots = {name: table_rows(lake, name).num_rows for name in tables}
    current = {name: lake.catalog.load_table(name).metadata.current_snapshot_id for name in tables}
    lake.ledger.close()

    backup = tmp_path / "backup"
    shutil.copytree(lake_home, backup)
    shutil.rmtree(lake_home)
    shutil.copytree(backup, lake_home, copy_function=shutil.copyfile)  # new inodes, new mtimes

    lake, summary = ingest(lake_home)
    assert summary.runs == 0
    after = ledger_by_key(lake)
    assert len(after) == len(before)
    assert {key: row["etag"] for key, row in after.items()} == {
        key: row["etag"] for key, row in before.items()
    }
    for name, rows in snapshots.items():
        assert table_rows(lake, name).num_rows == rows
        assert lake.catalog.load_table(name).metadata.current_snapshot_id == current[name]
    assert accounting_problems(lake) == []


@st.composite
def landing_tree(draw) -> tuple[dict[str, bytes], set[tuple[str, str]]]:
    """Archives of every source with fuzzed members (zip, AES zip or gzip), plus a stray or two."""
    objects: dict[str, bytes] = {}
    empty: set[tuple[str, str]] = set()
    for number in range(draw(st.integers(1, 6))):
        facility = draw(st.sampled_from(["F1", "F2"]))
        kind = draw(st.sampled_from(["adt_events", "lab_results", "patient_documents"]))
        folder = f"landing/{kind}/{DAY_PATH}/{facility}"
        if kind == "adt_events":
            messages = draw(st.lists(hl7_member(), max_size=3))
            members = {f"m{n}.hl7": data for n, (data, _) in enumerate(messages)}
        elif kind == "patient_documents":
            members = {f"d{n}.xml": data for n, data in enumerate(draw(st.lists(xml_member(), max_size=3)))}
        else:
            members = {}
            for n, (data, count) in enumerate(draw(st.lists(csv_member(), min_size=1, max_size=3))):
                members[f"r{n}.csv"] = data
                if count == 0:
                    empty.add((f"{folder}/a{number}.zip", f"r{n}.csv"))
            if draw(st.booleans()):
                key = f"{folder}/a{number}.csv.gz"
                objects[key] = gzip_bytes(members["r0.csv"])
                if (f"{folder}/a{number}.zip", "r0.csv") in empty:
                    empty.add((key, "r0.csv"))
                continue
        if draw(st.booleans()):
            members["readme.pdf"] = b"%PDF-1.4"
        packed = zip_aes(members, PASSWORD) if draw(st.booleans()) else zip_plain(members)
        objects[f"{folder}/a{number}.zip"] = packed
    for key in draw(st.lists(st.sampled_from(sorted(STRAYS)), max_size=2, unique=True)):
        objects[key] = b"stray"
    return objects, empty


@pytest.mark.e2e
@settings(
    max_examples=int(os.environ.get("MEDLAKE_FUZZ_E2E_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(landing_tree())
def test_fuzzed_landing_trees_through_real_runs_lose_nothing(tree) -> None:
    objects, empty = tree
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDLAKE_ARCHIVE_PASSWORD", PASSWORD)
        home = Path(folder) / "home"
        store = open_lake(local_settings(home)).store
        for key, data in objects.items():
            store.put(key, data)
        lake, summary = ingest(home)
        assert summary.failed_runs == 0
        assert accounting_problems(lake, empty_members=empty) == []
        lake.ledger.close()
