"""The harness's own overhead: how long `harness list`, `harness --help` and a grid error take (a fresh
interpreter each, as a user runs them), and the fixed cost of a cell: the wall time of a one-iteration
cell run through its supervised process tree, minus the meta-training, validation and test time it
records, that is child start, plugin loading, suite construction, record assembly and tree teardown.

The results file benchmarks/results/overhead-cpu.json is committed; it was written by

    python -m pytest benchmarks/test_bench_overhead.py --benchmark-enable --benchmark-only \
        --benchmark-json=benchmarks/results/overhead-cpu.json

Each entry's extra_info holds the median fixed cost of its cells (`fixed_cost_s_median`). Measured on
this 2-core machine (medians): `harness list` 0.19 s, `harness --help` 0.17 s, a grid error 0.17 s (1.8-2.0
s each before torch and pandas were kept out of them); the fixed cost of a maml cell 0.09 s, of an l2l-maml
cell 0.11 s (0.16 s and 1.5 s before the fork server imported the run's libraries and warmed up). These
are measurements, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cellprocess
from harness.grid import load_grid
from harness.registry import build_plugin_manager

BAD_GRID = 'name = "bad"\nseeds = 1\n[[block]]\nalgorithms = ["maml"]\nsuites = [{name = "sinusoid", shots = 0}]\n'
COMMANDS = {"list": ["list"], "help": ["--help"], "grid-error": ["run", "--grid", "bad.toml"]}
WORK = ("meta_train_s", "warmup_s", "validation_s", "test_s")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_seconds(benchmark, tmp_path: Path, command: str) -> None:
    (tmp_path / "bad.toml").write_text(BAD_GRID)
    argv = [sys.executable, "-m", "harness.cli", *COMMANDS[command]]
    benchmark.group = "harness commands, fresh interpreter each (seconds)"
    done = benchmark.pedantic(subprocess.run, args=(argv,), kwargs={"cwd": tmp_path, "capture_output": True},
                              rounds=15, warmup_rounds=2)
    assert done.returncode == (2 if command == "grid-error" else 0)


@pytest.mark.parametrize("algorithm", ["maml", "l2l-maml"])
def test_cell_fixed_cost(benchmark, tmp_path: Path, algorithm: str) -> None:
    if algorithm.startswith("l2l"):
        pytest.importorskip("learn2learn", reason="learn2learn is not installed (make learn2learn)")
    grid = tmp_path / "one.toml"
    grid.write_text(f'name = "one"\nseeds = 1\n[budget]\niterations = 1\nval_interval = 1000\nval_episodes = 1\n'
                    f'test_episodes = 1\nthreads = 1\n[[block]]\nalgorithms = ["{algorithm}"]\n'
                    f'suites = [{{name = "sinusoid"}}]\n')
    registry = build_plugin_manager()
    cell = load_grid(str(grid), registry).cells[0]
    # As a run does: a fork server of its own, which imports what the grid's plugins need, once.
    cellprocess.stop_fork_server()
    cellprocess.start_fork_server(sorted(set(registry.algorithm(algorithm).spec.requires)))
    fixed: list[float] = []

    def one_cell() -> None:
        import time

        start = time.perf_counter()
        outcome = cellprocess.run_in_process_tree(cell, registry.load_args)
        wall = time.perf_counter() - start
        assert outcome["status"] == "ok", outcome.get("reason")
        fixed.append(wall - sum(outcome["result"]["timings"][k] for k in WORK))

    benchmark.group = "one-iteration sinusoid cell through its process tree (seconds)"
    benchmark.pedantic(one_cell, rounds=12, warmup_rounds=1)
    cellprocess.join_supervisors()
    benchmark.extra_info["fixed_cost_s_median"] = statistics.median(fixed[1:])
