"""Execution policies, each written once: where runs execute, what runs without anyone switching it on, which
assets Dagster keeps up to date on its own, and the pool of each table's writers. `definitions.py` applies
them to the whole code location (`apply_policies`); sensors and schedules take their default status here."""

from __future__ import annotations

import dagster as dg

from medlake_assets.lake.memory import release_memory

# One process per step costs ~5 s a step (design.md section 3): every job runs its steps in its run's process.
EXECUTOR = dg.in_process_executor


def _release_and_report(context: dg.HookContext) -> None:
    # The step's peak goes to the run's log: an operator sizing run pods (and `bench soak`) sees which
    # step needs the memory, not only the run's total.
    if (memory := release_memory()) is not None:
        context.log.info(memory.describe(context.step_key))


@dg.success_hook(name="release_memory")
def _release_after_success(context: dg.HookContext) -> None:
    _release_and_report(context)


@dg.failure_hook(name="release_memory_after_failure")
def _release_after_failure(context: dg.HookContext) -> None:
    _release_and_report(context)


# ...so each step gives its memory back before the next one starts (`lake/memory.py`). Every job has them.
STEP_HOOKS = {_release_after_success, _release_after_failure}

# Files are processed as they land: sensors and schedules run as soon as the code loads, on a laptop's
# `make run` as in production, with no one to switch them on (an operator can still stop one in the UI).
SENSOR_STATUS = dg.DefaultSensorStatus.RUNNING
SCHEDULE_STATUS = dg.DefaultScheduleStatus.RUNNING

# Silver follows bronze: a landing day's silver is refined whenever its bronze changed (a backfill, a retry),
# not only in the `ingest_landed` run that loads both.
SILVER_AUTOMATION = dg.AutomationCondition.eager()

# Eager, rebuilt when a table it reads changes and not while a blocking check upstream fails, minus eager's
# "no dependency missing": a daily-partitioned silver parent always has missing days before its data starts.
ON_UPDATE = (
    dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
)

# The tag of a gold report asset saying when it is rebuilt (its header's `schedule`: on_update, daily, ...).
REFRESH_TAG = "medlake/refresh"


def table_pool(table: str) -> str:
    """The Dagster pool of everything that writes one Iceberg table (`namespace.name`): its loads and its
    maintenance take turns, since two writers of a table would fight over its metadata commits."""
    return "iceberg_" + table.replace(".", "_")


def with_automation(spec: dg.AssetSpec) -> dg.AssetSpec:
    """The asset with the automation condition its layer calls for: silver eager, `on_update` reports
    `ON_UPDATE`; every other asset only runs when asked (a sensor, a schedule, a person)."""
    if spec.group_name == "silver":
        return spec.replace_attributes(automation_condition=SILVER_AUTOMATION)
    if spec.tags.get(REFRESH_TAG) == "on_update":
        return spec.replace_attributes(automation_condition=ON_UPDATE)
    return spec


def apply_policies(defs: dg.Definitions) -> dg.Definitions:
    """`defs` with the automation conditions above and the executor of every job."""
    return dg.Definitions(
        assets=dg.map_asset_specs(with_automation, defs.assets or []),
        asset_checks=defs.asset_checks,
        jobs=defs.jobs,
        schedules=defs.schedules,
        sensors=defs.sensors,
        resources=defs.resources,
        loggers=defs.loggers,
        metadata=defs.metadata,
        executor=EXECUTOR,
    )
