"""Throughput of the executors: the `default` grid's wall time with `serial` and with `local --workers 2`,
measured side by side in one run, each a real `harness run` into a fresh results folder.

The results file benchmarks/results/executors-cpu.json is committed; it was written by

    python -m pytest benchmarks/test_bench_executors.py --benchmark-enable --benchmark-only \
        --benchmark-json=benchmarks/results/executors-cpu.json

The entry's extra_info holds both wall times, the throughput ratio (serial / local) and the check that
the two runs' records agree in every metric. A measurement, not a test: nothing asserts a time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from harness.results import ResultStore


def _run(folder: Path, *extra: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--grid", "default", "--results",
                           str(folder / "results"), "--leaderboards", str(folder / "leaderboards"), "--no-progress",
                           *extra], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - started


def _metrics(folder: Path) -> dict[str, tuple]:
    return {r["cell_id"]: (r["metric"]["mean"], (r.get("per_episode") or {}).get("values"))
            for r in ResultStore(folder / "results").iter_records() if r["status"] == "ok"}


def test_default_grid_serial_against_local_two_workers(benchmark, tmp_path: Path) -> None:
    benchmark.group = "the default grid's wall time (seconds)"
    serial_s = _run(tmp_path / "serial")
    local = tmp_path / "local"
    local_s = benchmark.pedantic(_run, args=(local, "--executor", "local", "--workers", "2"), rounds=1,
                                 iterations=1)
    same = _metrics(tmp_path / "serial") == _metrics(local)
    benchmark.extra_info.update({"serial_s": serial_s, "local_workers_2_s": local_s,
                                 "throughput_ratio": serial_s / local_s, "cells": len(_metrics(local)),
                                 "same_metrics": same})
    assert same
