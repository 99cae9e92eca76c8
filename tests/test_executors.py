"""Executors: the serial default, the local executor's worker processes (same numbers as serial, cores
never shared, records marked), option errors before any work, and an interrupted local run that leaves
no process, claim or record behind. Every run is a real `harness` process or the real session."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import GridError, UsageError
from harness.executors import ExecutorOptions, SerialExecutor, build_executor
from harness.grid import load_grid
from harness.results import ResultStore
from harness.session import run_grid
from tests.conftest import FAULTY
from tests.test_faults import healthy_grid, leftovers, marked, records, start, survivors  # noqa: F401

GRID = """name = "exec"
seeds = 2
backends = ["cpu"]
{executor}
[budget]
threads = {threads}
iterations = 30
val_interval = 15
val_episodes = 5
test_episodes = 20
timeout = 120
[[block]]
algorithms = ["maml", "metasgd"]
suites = [{{ name = "sinusoid", shots = 5 }}]
"""
#: Record fields that differ between two runs of the same cells: when and how they ran.
RUN_FIELDS = {"timings", "memory", "execution", "started_at", "finished_at", "environment"}


def _grid(tmp_path: Path, threads: int = 1, executor: str = "") -> Path:
    name = executor.split("=")[-1].strip(' "') or "none"
    path = tmp_path / f"exec-{threads}-{name}.toml"
    path.write_text(GRID.format(threads=threads, executor=executor))
    return path


def _run(tmp_path: Path, name: str, grid: Path, *extra: str) -> dict[str, dict]:
    results = tmp_path / name
    code = main(["run", "--grid", str(grid), "--results", str(results), "--leaderboards", str(tmp_path / f"lb-{name}"),
                 "--no-progress", *extra])
    assert code == 0
    return {r["cell_id"]: r for r in ResultStore(results).iter_records()}


def _same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for cell_id in a:
        left, right = ({k: v for k, v in r[cell_id].items() if k not in RUN_FIELDS} for r in (a, b))
        for curve in (left["curve"], right["curve"]):  # the learning curve's points carry their wall-clock time
            for point in curve:
                point.pop("elapsed_s")
        assert left == right, cell_id


def test_local_workers_compute_what_serial_computes_and_say_they_shared_the_machine(tmp_path):
    grid = _grid(tmp_path)
    serial = _run(tmp_path, "serial", grid)
    local = _run(tmp_path, "local", grid, "--executor", "local", "--workers", "2")
    _same_numbers(serial, local)  # metrics, per-episode values, curves, params: bit for bit
    assert {r["execution"]["executor"] for r in serial.values()} == {"serial"}
    assert {r["execution"]["executor"] for r in local.values()} == {"local"}
    assert all("placement" not in r["execution"] for r in serial.values())
    placed = [r["execution"]["placement"] for r in local.values()]
    assert all(len(p["cpus"]) == 1 and p["threads"] == 1 for p in placed)
    # Two workers: some cell ran beside another, and those records do not claim exclusive timings.
    shared = [r for r in local.values() if r["execution"].get("concurrent_cells")]
    assert shared and all(r["execution"]["exclusive"] is False for r in shared)
    by_time = sorted(local.values(), key=lambda r: r["started_at"])
    for first, second in zip(by_time, by_time[1:]):
        if second["started_at"] < first["finished_at"]:  # overlapping cells were pinned to different cores
            assert set(first["execution"]["placement"]["cpus"]).isdisjoint(second["execution"]["placement"]["cpus"])


def test_cells_that_need_every_core_run_one_at_a_time_under_local(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0))
    grid = _grid(tmp_path, threads=cores, executor='executor = "local"')  # the grid names its executor
    local = _run(tmp_path, "local", grid, "--workers", "2")
    assert {r["execution"]["executor"] for r in local.values()} == {"local"}
    spans = sorted((r["started_at"], r["finished_at"]) for r in local.values())
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans  # never overlapped
    assert all(r["execution"]["placement"]["cpus"] == sorted(os.sched_getaffinity(0)) for r in local.values())
    assert not any(r["execution"].get("concurrent_cells") for r in local.values())


def test_executor_mistakes_are_refused_before_any_cell_runs(tmp_path, registry):
    registry = registry
    with pytest.raises(UsageError, match="unknown executor 'nope'.*local.*serial"):
        build_executor(registry, "nope", ExecutorOptions())
    with pytest.raises(UsageError, match="--workers 2 needs --executor local"):
        build_executor(registry, "serial", ExecutorOptions(workers=2))
    with pytest.raises(UsageError, match="--address is the ray executor's"):
        build_executor(registry, "local", ExecutorOptions(address="127.0.0.1:6379"))
    with pytest.raises(UsageError, match="--in-process .* serial executor"):
        build_executor(registry, "local", ExecutorOptions(in_process=True))
    bad = _grid(tmp_path, executor='executor = "threads"')
    with pytest.raises(GridError, match=r"exec-1-threads.toml:4.*executor.*local, ray, serial"):
        load_grid(str(bad), registry)
    assert load_grid(str(_grid(tmp_path, executor='executor = "local"')), registry).executor == "local"
    results = tmp_path / "results"
    assert main(["run", "--grid", str(bad), "--results", str(results)]) == 2
    assert not results.exists()


def test_the_session_defaults_to_serial_when_no_executor_is_given(tmp_path, registry):
    grid = load_grid(str(_grid(tmp_path)), registry)
    outcome = run_grid(grid, registry, ResultStore(tmp_path / "r"), in_process=True, progress=False)
    assert outcome.ran == 4
    assert {(r["execution"]["executor"], r["execution"]["mode"]) for r in outcome.records} == {("serial", "in-process")}
    assert isinstance(build_executor(registry, None, ExecutorOptions()), SerialExecutor)


def test_an_interrupted_local_run_stops_every_cell_and_keeps_what_finished(tmp_path, healthy_grid):
    grid = healthy_grid(6, step_s=2.0)  # 8 iterations of 2 s: every cell runs ~16 s
    folder = tmp_path / "run"
    folder.mkdir()
    proc = start(["run", "-p", FAULTY, "--grid", str(grid), "--no-progress", "--executor", "local", "--workers", "2"],
                 folder, "local-interrupt")
    deadline = time.monotonic() + 60
    while len(marked("local-interrupt")) < 6 and time.monotonic() < deadline:  # driver, server, 2 x (sup + worker)
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err
    assert survivors("local-interrupt") == []  # both cells' process trees and the fork server are gone
    assert records(folder / "results") == []  # the interrupted cells wrote nothing
    assert leftovers(folder / "results") == []  # no claim left behind
