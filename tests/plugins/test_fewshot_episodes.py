"""The few-shot image suites' episodes, pinned: for a fixed generator seed every suite and sampler draws
exactly the episodes it drew before the suites were rebuilt on the shared few-shot mechanism
(plugins/fewshot/). Records are reused by fingerprint, so a change here silently invalidates published
numbers: an intended change of an episode stream bumps the suite's version and updates its digest here.

Each digest is the sha256 of the four tensors of `suite.sample(n, Generator().manual_seed(seed), split)`
(dtype, shape and bytes), computed from the suites as they were before the move.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from harness import TaskBatch
from harness.registry import build_plugin_manager
from tests.plugins.helpers import DATA, require_omniglot

pytest.importorskip("PIL", reason="the image suites decode PNG with Pillow (pip install pillow)")


def digest(batch: TaskBatch) -> str:
    h = hashlib.sha256()
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


#: case -> (suite, options, split, n_tasks, seed). `data` options are filled in by the fixtures.
CASES: dict[str, tuple[str, dict[str, Any], str, int, int]] = {
    "omniglot-5w1s-train": ("omniglot", {"query": 15}, "train", 4, 3),
    "omniglot-5w1s-rot-train": ("omniglot", {"query": 15, "rotations": True}, "train", 4, 3),
    "omniglot-5w1s-val": ("omniglot", {"query": 15}, "val", 4, 3),
    "omniglot-20w5s-test": ("omniglot", {"ways": 20, "shots": 5, "query": 5}, "test", 3, 7),
    "omniglot-l2l-5w1s-train": ("omniglot", {"query": 3, "rotations": True, "sampler": "learn2learn"},
                                "train", 4, 3),
    "omniglot-l2l-20w5s-test": ("omniglot", {"ways": 20, "shots": 5, "query": 5, "sampler": "learn2learn"},
                                "test", 2, 7),
    "glyphs-fresh-train": ("glyphs", {"query": 2, "num_classes": 200}, "train", 2, 5),
    "glyphs-pool-train": ("glyphs", {"query": 5, "num_classes": 200, "drawings": 20}, "train", 3, 5),
    "glyphs-pool-test": ("glyphs", {"ways": 10, "query": 5, "num_classes": 200, "drawings": 20}, "test", 3, 5),
    "glyphs-l2l-train": ("glyphs", {"query": 5, "num_classes": 200, "drawings": 20, "sampler": "learn2learn"},
                         "train", 3, 5),
    "runs-train": ("omniglot-runs", {"query": 3}, "train", 2, 1),
    "runs-rot-val": ("omniglot-runs", {"query": 3, "rotations": True}, "val", 2, 1),
    "runs-test": ("omniglot-runs", {"query": 3}, "test", 3, 1),
    "mini-imagenet-train": ("mini-imagenet", {"ways": 3, "query": 2, "image_size": 16}, "train", 3, 2),
    "tiered-imagenet-train": ("tiered-imagenet", {"ways": 3, "shots": 2, "query": 3, "image_size": 16},
                              "train", 3, 2),
    "mini-imagenet-l2l-test": ("mini-imagenet", {"ways": 3, "query": 2, "image_size": 16,
                                                 "sampler": "learn2learn"}, "test", 3, 2),
}

PINNED: dict[str, str] = {
    "omniglot-5w1s-train": "b46342ad60f9bb3f94f89e4df7a2cea9",
    "omniglot-5w1s-rot-train": "05b153bd8b38e41349ae6ec019438c00",
    "omniglot-5w1s-val": "2e7cc9483c07cc246c662fe03f859852",
    "omniglot-20w5s-test": "77ceb02f8feb4ab36511e9bccbade74c",
    "omniglot-l2l-5w1s-train": "ca7b9bea9a97a2b7967961e356d99757",
    "omniglot-l2l-20w5s-test": "c3080cf6506b052777ba3bb90ce44dfd",
    "glyphs-fresh-train": "8ca432401fd49c92df418270f796d2da",
    "glyphs-pool-train": "1e906b21464e8c924b0e5ae3a3612cc3",
    "glyphs-pool-test": "60879bba53abb75a9fc15f38395be060",
    "glyphs-l2l-train": "f0c6fdd1e57e449eee1586e16a4ed636",
    "runs-train": "cabce1dbf2dc2ac7e5790e25d6eb52a0",
    "runs-fixed": "0412652eb6635bd4398e8a303456eb55",
    "runs-rot-val": "5d4d63a2519df52cb8a72341d96a6c4f",
    "runs-test": "8017c38e4b3152eb1b6da213f7a365ac",
    "mini-imagenet-train": "92567bcfa96136f034f378f479df2e28",
    "tiered-imagenet-train": "04f315c0f0d2017c46525fb544fc1bff",
    "mini-imagenet-l2l-test": "f0de4bde754c635ac2faf8655a3596d5",
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data for every suite: the Omniglot small sets, twenty runs from small set 2, fabricated image sets."""
    require_omniglot()
    from metaharness_plugins.fewshot.omniglot_runs_build import write_runs
    from tests.fixtures.fewshot_images import WRITERS

    base = tmp_path_factory.mktemp("episodes")
    runs = base / "all_runs"
    write_runs(runs, DATA / "images_background_small2.zip", ("Japanese_(katakana)", "Sanskrit"), seed=0)
    out = {"omniglot": DATA, "runs": runs, "cache": base / "cache"}
    for name in ("mini-imagenet", "tiered-imagenet"):
        out[name] = WRITERS[name](base / name).root
    return out


def build(name: str, options: dict[str, Any], roots: dict[str, Path]) -> Any:
    registry = build_plugin_manager(entry_points=False)
    spec = registry.suite(name).spec
    options = dict(options)
    if name == "omniglot":
        options.update(data_root=str(roots["omniglot"]), cache_dir=str(roots["cache"]), download="never")
    elif name == "omniglot-runs":
        options.update(data_root=str(roots["omniglot"]), cache_dir=str(roots["cache"]), runs_dir=str(roots["runs"]),
                       archives=("images_background_small1.zip",))
    elif name != "glyphs":
        options.update(data_root=str(roots[name]), cache_dir=str(roots["cache"]))
    return spec.factory(spec.config(**options))


@pytest.mark.parametrize("case", list(CASES))
def test_episodes_are_the_ones_drawn_before(case: str, roots: dict[str, Path]) -> None:
    name, options, split, n, seed = CASES[case]
    if options.get("sampler") == "learn2learn" or name.endswith("imagenet"):
        pytest.importorskip("learn2learn", reason="needs learn2learn (make learn2learn)")
    suite = build(name, options, roots)
    assert digest(suite.sample(n, torch.Generator().manual_seed(seed), split)) == PINNED[case]
    if name == "omniglot-runs":
        assert digest(suite.fixed_episodes("test")) == PINNED["runs-fixed"]
