"""Estimate `harness run --grid full` on a cluster from the committed records' measured times.

For every cell of the full grid, the meta-training time is the grid's iterations times the per-iteration
time of committed ok records of the same algorithm on the same suite (the median over them); validation
and test times scale the records' own by the number of episodes. A pair without records takes the median
of its suite's other algorithms (linear-regression the sinusoid's, glyphs omniglot's), and is counted as
such. The cells are then list-scheduled, longest first, on N nodes of `--cores` cores (one single-thread
cell per core, as the ray executor declares them).

Usage: HARNESS_DATA=... python scripts/estimate_full.py [--results results] [--cores 2] [--nodes 1 4 16 64]
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
from collections import defaultdict
from pathlib import Path

from harness.grid import load_grid
from harness.registry import build_plugin_manager

STAND_IN = {"linear-regression": "sinusoid", "glyphs": "omniglot"}


def per_pair(results: Path) -> dict[tuple[str, str], dict[str, float]]:
    """(algorithm, suite) -> median seconds per meta-iteration, per validation episode, per test episode."""
    samples: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in results.glob("*/*.json"):
        record = json.loads(path.read_text())
        timings = record.get("timings") or {}
        if record.get("status") != "ok" or not timings.get("time_per_iteration_s"):
            continue
        budget = record["config"]["budget"]
        validations = max(1, timings["iterations"] // budget["val_interval"])
        key = (record["cell"]["algorithm"], record["cell"]["suite"])
        samples[key]["iteration"].append(timings["time_per_iteration_s"])
        per_val_episode = timings.get("validation_s", 0.0) / (validations * budget["val_episodes"])
        samples[key]["val_episode"].append(per_val_episode)
        samples[key]["test_episode"].append(timings.get("test_s", 0.0) / budget["test_episodes"])
    return {key: {k: statistics.median(v) for k, v in values.items()} for key, values in samples.items()}


def cell_seconds(cell, rates: dict[str, float]) -> float:
    budget = cell.budget
    validations = budget.iterations // budget.val_interval
    return (budget.iterations * rates["iteration"] + validations * budget.val_episodes * rates["val_episode"]
            + budget.test_episodes * rates["test_episode"])


def makespan(durations: list[float], slots: int) -> float:
    """Longest-processing-time-first list scheduling on `slots` identical cores."""
    loads = [0.0] * slots
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + d)
    return max(loads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4, 16, 64])
    args = parser.parse_args()
    registry = build_plugin_manager(entry_points=False)
    grid = load_grid("full", registry)
    pairs = per_pair(args.results)
    by_suite: dict[str, list[dict[str, float]]] = defaultdict(list)
    for (_, suite), rates in pairs.items():
        by_suite[suite].append(rates)
    suite_median = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in by_suite.items()}
    durations, measured, stand_in, over_timeout = [], 0, 0, []
    per_suite: dict[str, float] = defaultdict(float)
    for cell in grid.cells:
        rates = pairs.get((cell.algorithm, cell.suite))
        if rates is not None:
            measured += 1
        else:
            rates = suite_median.get(cell.suite) or suite_median.get(STAND_IN.get(cell.suite, ""))
            stand_in += 1
        if rates is None:
            raise SystemExit(f"no record to estimate {cell.id} from")
        seconds = cell_seconds(cell, rates)
        if seconds > cell.budget.timeout:
            over_timeout.append((cell.id, seconds))
        durations.append(seconds)
        per_suite[cell.suite] += seconds
    unavailable = [s for s in grid.skipped if s.status == "unavailable"]
    total = sum(durations)
    timeout = grid.cells[0].budget.timeout
    capped = [min(d, timeout) for d in durations]
    print(f"cells to run: {len(grid.cells)} ({measured} from records of the same algorithm and suite, "
          f"{stand_in} from their suite's median); {len(unavailable)} more unavailable here "
          f"({', '.join(sorted({s.cell.suite for s in unavailable}))})")
    print(f"CPU-hours (one core per cell): {total / 3600:,.0f} as budgeted, {sum(capped) / 3600:,.0f} with "
          f"the cells past the grid's {timeout / 3600:g} h timeout stopped there ({len(over_timeout)} cells, "
          f"the longest {max(durations) / 3600:.1f} h)")
    for cell_id, seconds in sorted(over_timeout, key=lambda kv: -kv[1])[:8]:
        print(f"  {cell_id}: {seconds / 3600:.1f} h")
    for suite, seconds in sorted(per_suite.items(), key=lambda kv: -kv[1]):
        print(f"  {suite}: {seconds / 3600:,.0f} CPU-hours")
    for n in args.nodes:
        wall, cut = makespan(durations, n * args.cores), makespan(capped, n * args.cores)
        print(f"{n} node(s) x {args.cores} cores: wall {wall / 3600:,.1f} h ({wall / 86400:,.1f} days); "
              f"{cut / 3600:,.1f} h with the timeout")


if __name__ == "__main__":
    main()
