"""Reptile: the outer update against a hand-written reference, adaptation, and convergence."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness import Algorithm, TaskBatch
from metaharness_plugins.algorithms import reptile as reptile_module
from metaharness_plugins.algorithms.reptile import Reptile, ReptileHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidSuite

Evaluate = Callable[[Algorithm, int], torch.Tensor]
MetaTrain = Callable[..., list[float]]


def _reference_step(
    model: nn.Module, batch: TaskBatch, hp: ReptileHparams
) -> tuple[dict[str, torch.Tensor], float]:
    """Algorithm 2 of the paper with an ordinary module and torch.optim.SGD: train a copy on each
    task's support + query points, then move phi a fraction outer_lr towards the mean of the copies."""
    phi = {k: v.detach().clone() for k, v in model.named_parameters()}
    adapted, query_losses = [], []
    for i in range(batch.num_tasks):
        task_model = copy.deepcopy(model)
        optimiser = torch.optim.SGD(task_model.parameters(), lr=hp.inner_lr)
        x = torch.cat([batch.support_x[i], batch.query_x[i]])
        y = torch.cat([batch.support_y[i], batch.query_y[i]])
        for _ in range(hp.inner_steps):
            optimiser.zero_grad()
            nn.functional.mse_loss(task_model(x), y).backward()
            optimiser.step()
        with torch.no_grad():
            query_losses.append(float(nn.functional.mse_loss(task_model(batch.query_x[i]), batch.query_y[i])))
        adapted.append({k: v.detach() for k, v in task_model.named_parameters()})
    new = {k: phi[k] + hp.outer_lr * (torch.stack([a[k] for a in adapted]).mean(0) - phi[k]) for k in phi}
    return new, sum(query_losses) / len(query_losses)


@pytest.mark.parametrize("vmap_tasks", [True, False])
def test_outer_update_matches_reference(suite: SinusoidSuite, backend: CPUBackend, vmap_tasks: bool) -> None:
    hp = ReptileHparams(meta_batch_size=3, vmap_tasks=vmap_tasks)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "train")
    torch.manual_seed(0)
    algo = Reptile(hp, suite.build_model(), suite, backend)
    expected, expected_loss = _reference_step(algo.model, batch, hp)
    loss = algo.meta_train_step(batch)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, p in algo.meta_parameters().items():
        assert isinstance(p, nn.Parameter) and p.grad is None
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-6)


def test_adapt_contract(suite: SinusoidSuite, backend: CPUBackend, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(Reptile(ReptileHparams(), suite.build_model(), suite, backend), 4)


def test_registers_reptile() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(reptile_module)
    [specs] = manager.hook.harness_register_algorithms()
    assert [s.name for s in specs] == ["reptile"]
    assert not specs[0].second_order and specs[0].task_kinds == {"regression", "classification"}
    defaults = ReptileHparams()
    assert (defaults.inner_lr, defaults.inner_steps, defaults.outer_lr, defaults.test_steps) == (
        0.02,
        5,
        0.1,
        10,
    )
    with pytest.raises(ValueError, match=r"outer_lr must be in \(0, 1\]"):
        ReptileHparams(outer_lr=1.5)


def test_reptile_improves_clearly_over_its_initialisation(
    suite: SinusoidSuite, backend: CPUBackend, evaluate: Evaluate, meta_train: MetaTrain
) -> None:
    torch.manual_seed(0)
    algo = Reptile(ReptileHparams(), suite.build_model(), suite, backend)
    init_curve = evaluate(algo, 10)
    meta_train(algo, 1000)
    curve = evaluate(algo, 10)
    # Measured (seed 0, 1000 iterations, 200 test tasks, K = 10, SGD lr 0.02): 1.48 after 10 steps,
    # from 4.02 untrained.
    assert curve[10] < 0.5 * init_curve[10]
    assert curve[10] < curve[0]
