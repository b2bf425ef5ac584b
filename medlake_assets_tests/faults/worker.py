"""A run worker as its own process: executes the bronze runs of given ledger batches, as a run pod would.

    python -m medlake_assets_tests.faults.worker --barrier DIR <batch id>...

Settings come from the `MEDLAKE_*` environment and the Dagster instance from `DAGSTER_HOME`, like the
k8s run launcher's pods. `--barrier` makes several workers begin their runs at the same instant: each
writes `DIR/ready-<pid>` once its imports and definitions are loaded, then waits for `DIR/go`. Prints one
JSON line per batch: {"batch": id, "success": bool}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import dagster as dg

from medlake_assets.definitions import build_definitions
from medlake_assets.defs.bronze import SOURCE_TAG, batch_run_config, batch_tag, job_name
from medlake_assets.defs.resources import LakeResource
from medlake_assets.lake.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--barrier", type=Path)
    parser.add_argument("batches", nargs="+")
    args = parser.parse_args()
    settings = load_settings()
    defs = build_definitions(settings)
    lake = LakeResource.from_settings(settings).lake()
    instance = dg.DagsterInstance.get()
    if args.barrier:
        (args.barrier / f"ready-{os.getpid()}").touch()
        while not (args.barrier / "go").exists():
            time.sleep(0.01)
    for batch_id in args.batches:
        files = lake.ledger.batch_files(batch_id)
        spec = lake.sources[files[0].source]
        result = defs.resolve_job_def(job_name(spec)).execute_in_process(
            run_config=batch_run_config(spec, batch_id),
            instance=instance,
            partition_key=files[0].landing_day.isoformat(),
            tags={batch_tag(spec.name): batch_id, SOURCE_TAG: spec.name},
            raise_on_error=False,
        )
        print(json.dumps({"batch": batch_id, "success": result.success}), flush=True)


if __name__ == "__main__":
    main()
