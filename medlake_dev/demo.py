"""`medlake demo` (what `make run` ends with): the embedded lake running under `dagster dev`, as deployed.

The landing sensor of `dagster dev`'s daemon ingests what is in the landing zone, so every run shows in
the UI under its job (launched by Dagster from the code location, not executed beside it), the landing
days appear as partitions as they fill, and the gold reports are submitted through the webserver the
same way. The console stays quiet: `dagster dev` logs to `MEDLAKE_HOME/dagster-dev.log`; what is printed
is progress, a summary, and where to look.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medlake_assets.errors import MedlakeError
from medlake_assets.lake import Lake
from medlake_assets.lake.settings import Settings

LOCATION = "medlake"
REPOSITORY = "__repository__"


class DemoError(MedlakeError, RuntimeError):
    """The demo could not come up; the message says what and where to look."""


@dataclass
class DagsterDev:
    """`dagster dev` (webserver and daemon) for the project's workspace, logging to a file."""

    settings: Settings
    port: int = 3000
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    def __enter__(self) -> DagsterDev:
        log_path = self.log_path or self.settings.home / "dagster-dev.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        dagster = Path(sys.executable).with_name("dagster")
        workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(dagster), "dev", "-h", self.host, "-p", str(self.port), "-w", str(workspace)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workspace.parent,
                env={**os.environ, **demo_environment()},
                start_new_session=True,
            )
        self.log_path = log_path
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop `dagster dev` with its whole process group: its code server and any run still going."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 60.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # Runs and code servers left after dagster dev itself exited are in the same group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait_until_serving(self, timeout: float = 180.0) -> None:
        """Until the webserver answers GraphQL with the code location loaded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise DemoError(f"dagster dev exited ({self.process.returncode}); see {self.log_path}")
            try:
                data = self.graphql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
                )
                entries = data["workspaceOrError"]["locationEntries"]
                if any(entry["name"] == LOCATION and entry["loadStatus"] == "LOADED" for entry in entries):
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(1.0)
        raise DemoError(f"dagster dev did not serve {self.url} within {timeout:.0f} s; see {self.log_path}")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """One GraphQL request to the webserver; its `data`."""
        import requests

        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise ValueError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def submit(self, job: str, tags: dict[str, str]) -> str:
        """Launch `job` through the webserver (so the run belongs to the code location); its run id."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient(self.host, port_number=self.port)
        return client.submit_job_execution(
            job, repository_location_name=LOCATION, repository_name=REPOSITORY, tags=tags
        )

    def wait_for_run(self, run_id: str, timeout: float = 600.0) -> str:
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient(self.host, port_number=self.port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get_run_status(run_id).value
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1.0)
        raise DemoError(f"run {run_id} did not finish within {timeout:.0f} s; see {self.url}/runs/{run_id}")


@dataclass(frozen=True)
class LakeProgress:
    landed: int
    done: int
    silver_pending: int

    @property
    def settled(self) -> bool:
        return self.landed > 0 and self.done >= self.landed and self.silver_pending == 0


def lake_progress(lake: Lake) -> LakeProgress:
    """Archives in landing, archives loaded or quarantined, and loaded batches silver has not taken in."""
    from medlake_assets.defs.silver import pending_silver

    landed = sum(1 for _ in lake.store.list("landing/"))  # every object, routed or not
    counts = lake.ledger.counts()
    pending = sum(
        len(batches)
        for spec in lake.sources.values()
        for batches in pending_silver(lake.ledger, spec).values()
    )
    done = counts.get("loaded", 0) + counts.get("quarantined", 0)
    return LakeProgress(landed=landed, done=done, silver_pending=pending)


def wait_until_ingested(
    lake: Lake,
    dev: DagsterDev,
    *,
    timeout: float = 900.0,
    on_progress: Callable[[LakeProgress], None] | None = None,
) -> LakeProgress:
    """Until the daemon's runs have loaded every landed archive and taken every batch into silver."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dev.process is not None and dev.process.poll() is not None:
            raise DemoError(f"dagster dev exited; see {dev.log_path}")
        state = lake_progress(lake)
        if on_progress:
            on_progress(state)
        if state.settled:
            return state
        time.sleep(2.0)
    raise DemoError(f"the lake was not ingested within {timeout:.0f} s; see {dev.url}/runs")


def demo_environment() -> dict[str, str]:
    """A sensor tick every 5 s so the first look fills within a minute (30 s is the default)."""
    return {"MEDLAKE_SENSOR_INTERVAL_SECONDS": os.environ.get("MEDLAKE_SENSOR_INTERVAL_SECONDS", "5")}
