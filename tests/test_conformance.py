"""Every registered algorithm on every suite it supports, on every available backend, at the smallest size."""

from __future__ import annotations

import dataclasses
import math

import pytest

from harness.cells import run_one
from harness.registry import build_plugin_manager
from harness.specs import Budget, Cell
from metaharness_plugins.fewshot.omniglot_runs_build import write_runs
from tests.fixtures import fewshot_images
from tests.plugins.helpers import DATA

REGISTRY = build_plugin_manager(entry_points=False)
SMALL = Budget(iterations=4, val_interval=2, val_episodes=2, test_episodes=3, threads=1)
#: The smallest configuration of each suite (the defaults where they are already small).
SMALLEST_SUITE = {
    "omniglot": (("image_size", 16), ("query", 2), ("ways", 3)),
    "glyphs": (("image_size", 16), ("query", 2), ("ways", 3)),
    "derivatives": (("test_query", 10),),
    "metaopt": (("steps", 10),),
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


#: The learn2learn-format suites read tiny files fabricated in their real formats.
FABRICATED = {"mini-imagenet": fewshot_images.write_mini_imagenet, "tiered-imagenet": fewshot_images.write_tiered_imagenet,
              "cifar-fs": fewshot_images.write_cifar_fs, "fc100": fewshot_images.write_fc100}


@pytest.fixture(scope="module")
def data_options(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Suite options pointing at data made for this module: three one-shot runs in the authors' format
    from alphabets of small set 2 (meta-training reads small set 1 only), and the fabricated files."""
    root = tmp_path_factory.mktemp("conformance-data")
    options: dict[str, tuple] = {}
    if (DATA / "images_background_small2.zip").is_file():
        write_runs(root / "runs", DATA / "images_background_small2.zip",
                   ["Japanese_(katakana)", "Sanskrit"], runs=3)
        options["omniglot-runs"] = (("archives", ("images_background_small1.zip",)), ("image_size", 16), ("query", 2),
                                    ("runs_dir", str(root / "runs")))
    for name, write in FABRICATED.items():
        write(root / name, size=16)
        options[name] = (("data_root", str(root / name)), ("cache_dir", str(root / "cache")),
                         ("image_size", 16), ("query", 2), ("ways", 3))
    return options


@pytest.mark.parametrize(("algorithm", "suite", "backend"), PAIRS, ids=["/".join(p) for p in PAIRS])
def test_algorithm_runs_on_suite_and_backend(algorithm, suite, backend, data_options):
    suite_spec = REGISTRY.suites[suite].spec
    config = SMALLEST_SUITE.get(suite, data_options.get(suite, ()))
    if suite_spec.check is not None and (reason := suite_spec.check(suite_spec.config(**dict(config)))):
        pytest.skip(reason)
    spec = REGISTRY.algorithms[algorithm].spec
    fields = {f.name for f in dataclasses.fields(spec.hparams)}
    smallest = tuple(p for p in SMALLEST_ALGORITHM if p[0] in fields)
    cell = Cell(algorithm, smallest, suite, config, backend, 0, SMALL)
    record = run_one(cell, REGISTRY, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert math.isfinite(metric["mean"]) and metric["n"] == 3
    assert len(metric["per_step"]) == metric["final_step"] + 1
    meta_trains = REGISTRY.algorithms[algorithm].spec.factory.resolve().meta_trains
    # A learner with nothing to meta-train (a finite difference) goes straight to the test episodes.
    assert record["timings"]["iterations"] == (4 if meta_trains else 0)
    assert record["params"] > 0 or not meta_trains
    assert spec.description and spec.paper, "a bundled algorithm names the paper it implements"
