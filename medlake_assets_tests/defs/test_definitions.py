"""The asset graph generated from metadata: loadable, and a snapshot so a YAML change shows as a diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from medlake_assets.definitions import build_definitions
from medlake_assets_tests.lake_helpers import local_settings

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


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
        }
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in repository.get_all_jobs() if not job.name.startswith("__")),
        "sensors": {s.name: s.job_name if s.has_jobs else None for s in repository.sensor_defs},
        "schedules": {s.name: s.cron_schedule for s in repository.schedule_defs},
    }


def test_definitions_load_and_match_snapshot(tmp_path):
    defs = build_definitions(local_settings(tmp_path))
    dg.Definitions.validate_loadable(defs)
    current = describe(defs)
    if os.environ.get("MEDLAKE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert (
        current == expected
    ), "the generated graph changed; re-run with MEDLAKE_UPDATE_SNAPSHOTS=1 and review"


def test_building_definitions_touches_no_storage(tmp_path):
    build_definitions(local_settings(tmp_path / "home"))
    assert not (tmp_path / "home").exists()
