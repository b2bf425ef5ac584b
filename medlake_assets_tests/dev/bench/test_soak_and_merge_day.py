"""The soak's arrival order, its step table and the merge-day benchmark's batches: the parts that decide what
they measure."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from medlake_dev.bench.merge import KEY, _catalog, day_batch, run_day_benchmark
from medlake_dev.bench.soak import (
    QUEUED,
    STAGES,
    ProcessSampler,
    SoakResult,
    cut_order,
    latency_stages,
    on_landing_day,
    render,
    soak_phases,
    stage_table,
    step_table,
)
from medlake_dev.generate import write_feeds


def test_the_soak_lands_archives_in_the_order_their_facilities_cut_them(
    tmp_path: Path, archive_password: str
) -> None:
    manifest = write_feeds(
        tmp_path, facilities=4, archives=40, seed=3, day=date(2026, 11, 20), size_scale=0.01
    )
    keys = sorted((archive["key"] for archive in manifest["archives"]), key=cut_order)
    cut_times = [cut_order(key)[0] for key in keys]
    assert all(cut_times) and cut_times == sorted(cut_times)
    # Facilities interleave: the first ten arrivals already come from more than one facility.
    assert len({key.split("/")[5] for key in keys[:10]}) > 1


def test_an_archive_sent_after_midnight_lands_in_the_next_days_folder() -> None:
    generated = "landing/adt_events/2026/11/26/F0014/adt_events_F0014_000040_0000.zip"
    assert on_landing_day(generated, date(2026, 11, 26)) == generated
    assert (
        on_landing_day(generated, date(2026, 11, 27))
        == "landing/adt_events/2026/11/27/F0014/adt_events_F0014_000040_0000.zip"
    )


def test_the_step_table_gives_each_steps_highest_peak_over_the_runs() -> None:
    def profile(lab_seconds: float, lab_peak: int) -> dict:
        return {
            "queued_s": 4.0,
            "startup_s": 0.1,
            "steps": {"silver__lab_results": lab_seconds, "bronze__adt_events": 1.0},
            "step_peak_mb": {"silver__lab_results": lab_peak, "bronze__adt_events": 600},
        }

    console = Console(width=200, record=True)
    console.print(step_table([profile(3.0, 1_480), profile(5.0, 2_210)]))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if "│" in line}
    assert [cell.strip() for cell in rows["silver__lab_results"].split("│")[2:-1]] == [
        "2", "8", "78%", "3.0", "5.0", "2,210"
    ]  # fmt: skip
    assert rows["bronze__adt_events"].split("│")[-2].strip() == "600"
    assert rows[QUEUED].split("│")[-2].strip() == ""  # no step: no peak


def test_cpu_cores_count_each_process_within_the_window_only() -> None:
    """Cores per kind over [100, 110): a process running before the window counts from its last sample
    before it; one started within it from zero; one that left within it up to its last sample."""
    sampler = ProcessSampler([])
    runs = {
        1: ("run worker", 0.0, [(95.0, 50.0), (101.0, 52.0), (109.0, 60.0), (111.0, 61.0)]),  # 10 s
        2: ("run worker", 104.0, [(105.0, 1.5), (107.0, 4.0)]),  # started within: 4 s, gone at 107
        3: ("s3", 0.0, [(101.0, 30.0), (109.0, 31.0)]),  # first sampled within, started before: 1 s
        4: ("daemon", 0.0, [(99.0, 7.0), (103.0, 7.5)]),  # 0.5 s
        5: ("other", 0.0, [(90.0, 1.0), (112.0, 9.0)]),  # no sample within: not counted
    }
    for pid, (kind, started, samples) in runs.items():
        key = (pid, started)
        sampler.kinds[key], sampler.cpu[key] = kind, samples
    assert sampler.cores(100.0, 110.0) == pytest.approx({"run worker": 1.4, "s3": 0.1, "daemon": 0.05})


class _Shown:
    """A process as the sampler reads it: its command line at each sample, in turn."""

    def __init__(self, *command_lines: list[str]) -> None:
        self.command_lines = list(command_lines)

    def cmdline(self) -> list[str]:
        return self.command_lines.pop(0)


def test_a_process_seen_exiting_keeps_its_kind() -> None:
    # Linux empties a process's command line once its memory is freed: a run worker sampled as it exits
    # (seen in 11 of 40 children freeing 50 MB, sampled in a loop) was "other", and so were its CPU and peak.
    sampler = ProcessSampler([])
    run, exiting = (101, 1.0), _Shown([sys.executable, "-m", "dagster", "api", "execute_run"], [])
    sampler.classify(run, exiting)  # type: ignore[arg-type]
    sampler.classify(run, exiting)  # type: ignore[arg-type]
    assert sampler.kinds[run] == "run worker"
    unseen = (102, 1.0)
    sampler.classify(unseen, _Shown([]))  # type: ignore[arg-type]
    assert sampler.kinds[unseen] == "other"


def test_a_pid_taken_again_by_another_process_is_another_process() -> None:
    # pids wrap at 32,768 here: in the soak of 2026-12-05 19:17 a run's pid, taken again by a short
    # process, moved the run's CPU to "the rest" and made a window's "rest" -0.25 cores.
    with ProcessSampler([os.getpid()], interval=0.05).watch() as sampler:
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)", "execute" + "_run"])
        assert child.wait(timeout=30) == 0
        time.sleep(0.2)
    ended = time.time()
    (key,) = [key for key in sampler.kinds if key[0] == child.pid]
    assert sampler.kinds[key] == "run worker"
    # The same pid again, started later, as a process of another kind with little CPU time.
    again = (child.pid, ended + 1.0)
    sampler.kinds[again] = "other"
    sampler.cpu[again] = [(ended + 1.5, 0.01), (ended + 2.0, 0.02)]
    cores = sampler.cores(started, ended + 3.0)
    assert set(cores) == {"run worker", "other"} and all(value >= 0 for value in cores.values())
    assert sampler.kinds[key] == "run worker"


def test_a_process_seen_before_it_execs_into_a_run_worker_counts_as_a_run_worker() -> None:
    # A run is launched by fork and exec: sampled in between, it shows its parent's command line (here a
    # plain `python -c`), and the soak of 2026-12-05 16:36 counted a 187 s surge run as "the rest".
    become_run = (
        "import os, sys, time; time.sleep(3.0); "
        "os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1.0)', 'execute' + '_run'])"
    )
    with ProcessSampler([os.getpid()], interval=0.05).watch() as sampler:
        started = time.time()
        child = subprocess.Popen([sys.executable, "-c", become_run])
        while (
            not (seen := [key for key in sampler.kinds if key[0] == child.pid])
            and time.time() < started + 2.5
        ):
            time.sleep(0.05)
        first_seen_as = sampler.kinds.get(seen[0]) if seen else None
        assert child.wait(timeout=30) == 0
    ended = time.time()
    assert first_seen_as == "other"
    assert sampler.kinds[seen[0]] == "run worker"
    assert set(sampler.peaks(started, ended)) == {"run worker"}
    assert set(sampler.cores(started, ended)) == {"run worker"}


def test_latency_is_cut_into_stages_that_add_up_and_the_tail_is_shown_by_stage() -> None:
    # Ten archives land at once and are registered 2 s later. Nine go into a run requested 22 s after that;
    # one (k9) waits 400 s for its run: the tail is a wait for a run, not the run.
    landed = {f"k{index}": 100.0 for index in range(10)}
    registered = {key: (102.0, "b2" if key == "k9" else "b1") for key in landed}
    profiles = [
        {"created": 90.0, "queued_s": 1.0, "batches": {"adt_events": "b0"}},
        {"created": 124.0, "queued_s": 4.0, "batches": {"lab_results": "b1", "adt_events": "b0b"}},
        {"created": 502.0, "queued_s": 5.0, "batches": {"adt_events": "b2"}},
    ]
    in_silver = {key: 150.0 for key in landed} | {"k9": 530.0, "k-not-landed": 1.0}
    stages = latency_stages(landed, registered, in_silver, profiles)
    assert set(stages) == set(landed)
    for key, parts in stages.items():
        assert sum(parts) == pytest.approx(in_silver[key] - landed[key])
    assert stages["k0"] == pytest.approx((2.0, 22.0, 4.0, 22.0))
    assert stages["k9"] == pytest.approx((2.0, 400.0, 5.0, 23.0))

    console = Console(width=200, record=True)
    console.print(stage_table(stages, dict.fromkeys(landed, "normal")))
    rows = {
        cells[1]: cells[2:]
        for line in console.export_text().splitlines()
        if "│" in line and (cells := [cell.strip() for cell in line.split("│")[1:-1]])[0] == "normal"
    }
    assert list(rows) == list(STAGES)
    # p50, p95, max, and the mean over the slowest 5% (k9 alone).
    assert rows["registered to run requested"] == ["22.0", "400.0", "400.0", "400.0"]
    assert rows["run start to silver"] == ["22.0", "23.0", "23.0", "23.0"]


def _soak_result(p95: float, drained: float | None, checks_pass: bool = True) -> SoakResult:
    return SoakResult(
        phases=soak_phases(30, 5, 15, 3500, 10),
        workers=1,
        sensor_interval=5,
        windows=[],
        landed=100,
        in_silver=100,
        normal_p95=p95,
        normal_backlogs=[30, 25, 40],
        surge_end_backlog=2_000,
        drain_seconds=drained,
        failed_runs=0,
        runs=20,
        checks=[("bronze.x = manifest, no duplicate record", checks_pass, "10 rows")],
        profiles=[],
        load_average=1.0,
        records=1_000,
    )


def test_the_soak_exits_1_when_a_target_is_not_met_but_not_for_the_stretch() -> None:
    assert _soak_result(p95=45.0, drained=600).ok  # the 30 s stretch not met: still a pass
    assert not _soak_result(p95=76.2, drained=600).ok
    assert not _soak_result(p95=45.0, drained=948).ok  # drained after more than 15 minutes
    assert not _soak_result(p95=45.0, drained=None).ok
    assert not _soak_result(p95=45.0, drained=600, checks_pass=False).ok
    console = Console(width=200, record=True)
    for table in render(_soak_result(p95=45.0, drained=948)):
        console.print(table)
    lines = [line for line in console.export_text().splitlines() if "│" in line]
    assert any("(stretch) p95 <= 30 s" in line and "not met" in line for line in lines)
    assert any("surge backlog drained" in line and "not met" in line and "948 s" in line for line in lines)


def test_merge_day_batches_number_orders_on_and_finalise_a_fifth_of_the_last_batch() -> None:
    first, second = day_batch(0, 100, 4, seed=7), day_batch(1, 100, 4, seed=7)
    assert first.height == 500 and set(first["result_status"]) == {"P"}
    new = second.filter(pl.col("result_status") == "P")
    final = second.filter(pl.col("result_status") == "F")
    assert new["order_id"].min() > first["order_id"].max()  # numbered on, and sortable as text
    assert set(final["order_id"]) < set(first["order_id"])
    assert 50 <= final.height <= 150  # about a fifth of 100 orders, 5 results each
    assert not second.select(KEY).is_duplicated().any()


def test_merge_day_keeps_one_row_per_key_and_the_final_results(tmp_path: Path) -> None:
    outcome = run_day_benchmark(batches=3, orders=200, facilities=4, buckets=2, window=1, work_dir=tmp_path)
    assert [run.table_rows for run in outcome.runs] == [0, 1000, 2000]
    rows = pl.from_arrow(_catalog(tmp_path).load_table("silver.lab_results_day").scan().to_arrow())
    assert rows.height == 3000 and not rows.select(KEY).is_duplicated().any()
    finals = day_batch(1, 200, 4, seed=7).filter(pl.col("result_status") == "F").height
    finals += day_batch(2, 200, 4, seed=7).filter(pl.col("result_status") == "F").height
    assert rows.filter(pl.col("result_status") == "F").height == finals
