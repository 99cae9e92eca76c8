"""Every native image algorithm learns real Omniglot (small background sets, alphabet-disjoint split)
through the real runner: 5-way 1-shot test accuracy after a short meta-training clearly above chance.

ANIL, ProtoNets, Matching Networks, first-order MAML and the learn2learn algorithms have their own
learning checks beside their unit tests (tests/plugins/); this module covers the rest, so every
algorithm that a leaderboard of image algorithms shows has been seen learning in CI.
"""

from __future__ import annotations

import pytest

from harness.cells import run_one
from harness.specs import Budget, Cell
from tests.plugins.helpers import require_omniglot

#: 40 meta-iterations of 4 tasks, 5 query images per class; 60 shared test episodes. Each cell seeds
#: its own initialisation from its id, so this is one draw per algorithm: thresholds leave room.
BUDGET = Budget(iterations=40, val_interval=40, val_episodes=10, test_episodes=60, threads=1)
SUITE = (("query", 5), ("shots", 1), ("ways", 5))
CASES = {
    "maml": (("inner_lr", 0.4), ("meta_batch_size", 4), ("meta_lr", 0.003), ("test_steps", 3),
             ("vmap_tasks", False)),
    "metasgd": (("meta_batch_size", 4), ("meta_lr", 0.003), ("vmap_tasks", False)),
    "reptile": (("meta_batch_size", 4), ("vmap_tasks", False)),
    "pretrain": (("inner_lr", 0.1), ("lr", 0.003), ("meta_batch_size", 4)),
    "matchingnet": (("fce", True), ("meta_batch_size", 4), ("meta_lr", 0.003)),
}


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_beats_chance_clearly_on_real_omniglot(registry, algorithm: str) -> None:
    require_omniglot()
    record = run_one(Cell(algorithm, CASES[algorithm], "omniglot", SUITE, "cpu", 0, BUDGET), registry,
                     in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert metric["name"] == "accuracy" and metric["n"] == 60
    # Chance is 0.2 for 5 ways: the whole 95% interval must sit well above it.
    assert metric["mean"] - metric["ci95"] > 0.26, f"{algorithm}: {metric['mean']:.3f} ± {metric['ci95']:.3f}"
