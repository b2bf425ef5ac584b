"""A missing archive password is a configuration fault, not bad input: the archives that need it stay pending
(the ledger names the secret to set, never a value), the run fails loudly, the other facilities of the batch
load, and the held archives load by themselves once the secret is set."""

from __future__ import annotations

import secrets

import dagster as dg
from typer.testing import CliRunner

from medlake_assets.cli import app
from medlake_assets.definitions import build_definitions
from medlake_assets.defs.runner import ingest_once
from medlake_assets_tests.accounting import accounting_problems
from medlake_assets_tests.ingest.archive_builders import gzip_bytes, zip_aes
from medlake_assets_tests.lake_helpers import DAY, ledger_by_key, local_settings, open_lake, table_rows

HEADER = (
    "facility_id,patient_id,order_id,test_code,test_name,value,unit,reference_range,abnormal_flag,"
    "result_status,result_ts"
)


def lab_csv(facility: str, order: str) -> bytes:
    row = f"{facility},P1,{order},2345-7,Glucose,101,mg/dL,70-99,H,F,2026-11-20T08:00:00"
    return f"{HEADER}\n{row}\n".encode()


def key(facility: str, name: str) -> str:
    return f"landing/lab_results/{DAY:%Y/%m/%d}/{facility}/{name}"


def test_missing_password_holds_the_archives_fails_loudly_and_loads_once_set(tmp_path, monkeypatch):
    password_1, password_2 = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    monkeypatch.delenv("MEDLAKE_ARCHIVE_PASSWORD", raising=False)
    monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD__F1", password_1)
    monkeypatch.delenv("MEDLAKE_ARCHIVE_PASSWORD__F2", raising=False)
    home = tmp_path / "home"
    settings = local_settings(home)
    lake = open_lake(settings)
    held_key = key("F2", "lab_1.zip")
    lake.store.put(key("F1", "lab_1.zip"), zip_aes({"a.csv": lab_csv("F1", "O1")}, password_1))
    lake.store.put(held_key, zip_aes({"a.csv": lab_csv("F2", "O2")}, password_2))
    lake.store.put(key("F2", "lab_2.csv.gz"), gzip_bytes(lab_csv("F2", "O3")))  # needs no password
    defs = build_definitions(settings)

    with dg.instance_for_test() as instance:
        summary = ingest_once(defs, instance, lake, refine_silver=False)
        # The batch's run fails, naming the missing secret; the rest of its batch loaded.
        assert summary.failed_runs == 1
        [failed] = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        checks = [
            record.get_dagster_event().asset_check_evaluation_data
            for record in instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
        [secrets_check] = [check for check in checks if check.check_name == "archive_secrets"]
        assert not secrets_check.passed
        assert secrets_check.metadata["missing_secrets"].value == "MEDLAKE_ARCHIVE_PASSWORD__F2"
        assert sorted(table_rows(lake, "bronze.lab_results").column("order_id").to_pylist()) == ["O1", "O3"]
        row = ledger_by_key(lake)[held_key]
        assert (row["status"], row["rule"], row["batch_id"]) == ("pending", "config.missing_secret", None)
        assert "MEDLAKE_ARCHIVE_PASSWORD__F2" in row["reason"]
        assert not lake.store.exists(f"quarantine/{held_key}")
        assert accounting_problems(lake) == []
        logs = "".join(str(record.user_message) for record in instance.all_logs(failed.run_id))
        assert password_1 not in logs and password_2 not in logs

        # Still missing: no new run, the archive stays held.
        assert ingest_once(defs, instance, lake, refine_silver=False).runs == 0
        assert ledger_by_key(lake)[held_key]["status"] == "pending"

        # The secret is set: the next pass loads the held archive by itself.
        monkeypatch.setenv("MEDLAKE_ARCHIVE_PASSWORD__F2", password_2)
        again = ingest_once(defs, instance, lake, refine_silver=False)
        assert (again.runs, again.failed_runs) == (1, 0)
    row = ledger_by_key(lake)[held_key]
    assert (row["status"], row["rule"], row["reason"], row["records"]) == ("loaded", None, None, 1)
    assert sorted(table_rows(lake, "bronze.lab_results").column("order_id").to_pylist()) == ["O1", "O2", "O3"]
    assert accounting_problems(lake) == []


def test_ingest_once_exits_non_zero_naming_the_variable_while_archives_are_held(tmp_path, monkeypatch):
    password = secrets.token_urlsafe(12)
    monkeypatch.delenv("MEDLAKE_ARCHIVE_PASSWORD", raising=False)
    monkeypatch.delenv("MEDLAKE_ARCHIVE_PASSWORD__F2", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("MEDLAKE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    archive = zip_aes({"a.csv": lab_csv("F2", "O2")}, password)
    open_lake(local_settings(home)).store.put(key("F2", "lab_1.zip"), archive)

    runner = CliRunner()
    for _ in range(2):  # the failing run, then a pass with nothing to run: both say what to set
        result = runner.invoke(app, ["ingest", "--once"])
        assert result.exit_code == 1, result.output
        assert "MEDLAKE_ARCHIVE_PASSWORD__F2" in result.output
        assert password not in result.output
