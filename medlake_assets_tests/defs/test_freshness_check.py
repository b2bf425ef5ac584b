"""The scheduled freshness checks on a real Dagster instance: a feed that goes silent turns its check red
with no new data and no silver run, facility by facility and then for the whole source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from medlake_assets.definitions import build_definitions
from medlake_assets_tests.lake_helpers import land_history, local_settings, open_lake, time_passes

LAB = dg.AssetKey(["silver", "lab_results"])


def evaluate(defs: dg.Definitions, instance: dg.DagsterInstance) -> dict[str, dg.AssetCheckEvaluation]:
    """One tick of the freshness schedule, and the run it asks for."""
    schedule = defs.resolve_schedule_def("silver_freshness")
    (request,) = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
    result = defs.resolve_job_def(schedule.job_name).execute_in_process(
        instance=instance, tags=request.tags, run_config=request.run_config
    )
    assert result.success
    return {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}


def test_a_silent_feed_turns_its_freshness_check_red_without_new_data(tmp_path):
    settings = local_settings(tmp_path / "home")
    lake = open_lake(settings)
    now = datetime.now(UTC)
    land_history(lake, "F1", now - timedelta(minutes=20), deliveries=24)
    land_history(lake, "F2", now - timedelta(minutes=10), deliveries=24)
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def("silver_freshness")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        fresh = evaluate(defs, instance)["lab_results"]
        assert fresh.passed, fresh.metadata
        assert fresh.metadata["stale_facilities"].value == {}
        assert fresh.metadata["facilities"].value == 2

        time_passes(lake, 120, facility="F1")  # F1 stops sending for 2 h 20 min; F2 goes on
        late = evaluate(defs, instance)["lab_results"]
        assert not late.passed
        assert late.severity == dg.AssetCheckSeverity.WARN, "one facility late, the source within its SLA"
        (stale,) = late.metadata["stale_facilities"].value.items()
        assert stale[0] == "F1"
        assert stale[1]["usual_interval_minutes"] == 60.0
        assert stale[1]["limit_minutes"] == 90.0
        assert stale[1]["lag_minutes"] >= 140

        time_passes(lake, 180)  # the whole feed is silent for 3 hours: past the source's 120-minute SLA
        silent = evaluate(defs, instance)["lab_results"]
        assert not silent.passed
        assert silent.severity == dg.AssetCheckSeverity.ERROR
        assert set(silent.metadata["stale_facilities"].value) == {"F1", "F2"}
        assert silent.metadata["source_lag_minutes"].value >= 190

        stored = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(LAB, "freshness")]
        )
        assert stored[dg.AssetCheckKey(LAB, "freshness")].evaluation.passed is False
        # A source with no arrivals at all is not fresh either.
        assert evaluate(defs, instance)["bed_census"].passed is False
    assert lake.ledger.counts("lab_results")["pending"] == 48, "no data landed, nothing was loaded"
