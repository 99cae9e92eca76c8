"""Speed of the bundled algorithms on sinusoid (MAML paper sizes): one meta-iteration and one test adaptation.

Run with `make bench`; the results file is committed under benchmarks/results/. These are
measurements, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import pytest
import torch

from harness.registry import build_plugin_manager
from harness.specs import resolve_params

REGISTRY = build_plugin_manager(entry_points=False)
ALGORITHMS = ["maml", "fomaml", "metasgd", "reptile", "pretrain"]


def _build(name: str, shots: int = 10):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    suite_spec, algo_spec = REGISTRY.suite("sinusoid").spec, REGISTRY.algorithm(name).spec
    suite = suite_spec.factory(resolve_params(suite_spec.config, {"shots": shots}, "sinusoid"))
    backend = REGISTRY.backend("cpu").spec.factory()
    algo = algo_spec.factory(hparams=resolve_params(algo_spec.hparams, {}, name), model=suite.build_model(),
                             suite=suite, backend=backend)
    return suite, algo


@pytest.mark.parametrize("name", ALGORITHMS)
def test_meta_train_step(benchmark, name):
    suite, algo = _build(name)
    batch = suite.sample(algo.meta_batch_size, torch.Generator().manual_seed(1), "train")
    benchmark.group = "meta-iteration (25 tasks, K=10, 1 thread)"
    benchmark(algo.meta_train_step, batch)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_test_time_adaptation(benchmark, name):
    suite, algo = _build(name)
    batch = suite.sample(1, torch.Generator().manual_seed(2), "test")
    benchmark.group = "adaptation of one test task (its test_steps)"
    benchmark(algo.adapt, batch.support_x[0], batch.support_y[0], algo.test_steps)
