"""The asset graph generated from metadata: loadable, and a snapshot so a YAML change shows as a diff.

The snapshot (syrupy, `__snapshots__/test_definitions/`) holds every asset's group, kinds, partitions,
checks, pool, upstream assets and automation condition, each job's asset selection, sensors and schedules,
the jobs' executors and what does not run from the start.
After a deliberate change: `pytest medlake_assets_tests/defs/test_definitions.py --snapshot-update`, then
review the diff."""

from __future__ import annotations

import dagster as dg
from syrupy.extensions.json import JSONSnapshotExtension

from medlake_assets.definitions import build_definitions
from medlake_assets_tests.lake_helpers import local_settings


def condition_text(condition: dg.AutomationCondition | None) -> str | None:
    """An automation condition as its label, or its operator over its operands' texts."""
    if condition is None:
        return None
    if label := condition.get_label():
        return label
    operands = [condition_text(child) for child in condition.children]
    return f"{condition.name}({', '.join(text or '' for text in operands)})" if operands else condition.name


def describe(defs: dg.Definitions) -> dict:
    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": partitions
            and (
                {"type": type(partitions).__name__, "name": partitions.name}
                if isinstance(partitions, dg.DynamicPartitionsDefinition)
                else {
                    "type": type(partitions).__name__,
                    "start": partitions.start.strftime("%Y-%m-%d"),
                    "timezone": partitions.timezone,
                    "end_offset": partitions.end_offset,
                }
            ),
            "checks": sorted(
                [graph.get_check_spec(check).name, graph.get_check_spec(check).blocking]
                for check in graph.get_check_keys_for_assets({key})
            ),
            "pool": node.pools and sorted(node.pools),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "automation_condition": condition_text(node.automation_condition),
        }
    return {
        "assets": assets,
        "jobs": {
            job.name: sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys)
            for job in sorted(repository.get_all_jobs(), key=lambda job: job.name)
            if not job.name.startswith("__")
        },
        "sensors": {s.name: s.job_name if s.has_jobs else None for s in repository.sensor_defs},
        "schedules": {s.name: s.cron_schedule for s in repository.schedule_defs},
        # policies.py: one executor for every job, every sensor and schedule running from the start.
        "executors": sorted({job.executor_def.name for job in repository.get_all_jobs()}),
        "stopped_at_start": sorted(
            s.name
            for s in [*repository.sensor_defs, *repository.schedule_defs]
            if s.default_status.value != "RUNNING"
        ),
    }


def test_definitions_load_and_match_snapshot(tmp_path, snapshot):
    defs = build_definitions(local_settings(tmp_path))
    dg.Definitions.validate_loadable(defs)
    assert describe(defs) == snapshot.use_extension(JSONSnapshotExtension)


def test_building_definitions_touches_no_storage(tmp_path):
    build_definitions(local_settings(tmp_path / "home"))
    assert not (tmp_path / "home").exists()


def test_every_job_gives_memory_back_after_each_step(tmp_path):
    """The release hooks sit on each `define_asset_job` (Dagster has no code-location-wide hook): a new job
    without them would keep each step's peak for the next (`lake/memory.py`)."""
    from medlake_assets.defs.policies import STEP_HOOKS

    jobs = build_definitions(local_settings(tmp_path)).get_repository_def().get_all_jobs()
    named = [job for job in jobs if not job.name.startswith("__")]  # Dagster's implicit asset jobs
    assert len(named) > 10
    assert [job.name for job in named if not job.hook_defs >= STEP_HOOKS] == []
