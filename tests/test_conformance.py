"""Every registered algorithm on every suite it supports, on every available backend, at the smallest size."""

from __future__ import annotations

import math

import pytest

from harness.registry import build_plugin_manager
from harness.runner import run_one
from harness.specs import Budget, Cell

REGISTRY = build_plugin_manager(entry_points=False)
SMALL = Budget(iterations=4, val_interval=2, val_episodes=2, test_episodes=3, threads=1)
#: The smallest configuration of each suite (the defaults where they are already small).
SMALLEST_SUITE = {
    "omniglot": (("image_size", 16), ("query", 2), ("ways", 3)),
    "glyphs": (("image_size", 16), ("query", 2), ("ways", 3)),
}
SMALLEST_ALGORITHM = (("meta_batch_size", 2),)
PAIRS = [
    (a, s, b)
    for a, a_reg in sorted(REGISTRY.algorithms.items())
    for s, s_reg in sorted(REGISTRY.suites.items())
    if s_reg.spec.task_kind in a_reg.spec.task_kinds
    for b, b_reg in sorted(REGISTRY.backends.items())
    if b_reg.available
]


@pytest.mark.parametrize(("algorithm", "suite", "backend"), PAIRS, ids=["/".join(p) for p in PAIRS])
def test_algorithm_runs_on_suite_and_backend(algorithm, suite, backend):
    suite_spec = REGISTRY.suites[suite].spec
    config = SMALLEST_SUITE.get(suite, ())
    if suite_spec.check is not None and (reason := suite_spec.check(suite_spec.config(**dict(config)))):
        pytest.skip(reason)
    cell = Cell(algorithm, SMALLEST_ALGORITHM, suite, config, backend, 0, SMALL)
    record = run_one(cell, REGISTRY, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert math.isfinite(metric["mean"]) and metric["n"] == 3
    assert len(metric["per_step"]) == metric["final_step"] + 1
    assert record["params"] > 0 and record["timings"]["iterations"] == 4
    spec = REGISTRY.algorithms[algorithm].spec
    assert spec.description and spec.paper, "a bundled algorithm names the paper it implements"
