"""Meta-SGD: the learned learning rates (initialisation, gradient, use at test time) and convergence."""

from __future__ import annotations

from collections.abc import Callable

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness import Algorithm, TaskBatch
from metaharness_plugins.algorithms import metasgd as metasgd_module
from metaharness_plugins.algorithms.metasgd import MetaSGD, MetaSGDHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite
from tests.plugins.test_maml import _Images

Evaluate = Callable[[Algorithm, int], torch.Tensor]
MetaTrain = Callable[..., list[float]]


def _tiny_algo(steps: int, vmap_tasks: bool = True) -> MetaSGD:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    return MetaSGD(
        MetaSGDHparams(inner_steps=steps, vmap_tasks=vmap_tasks), model, SinusoidSuite(SinusoidConfig()), CPUBackend()
    )


def _tiny_batch() -> TaskBatch:
    batch = SinusoidSuite(SinusoidConfig(shots=5, query=6)).sample(
        4, torch.Generator().manual_seed(21), "train"
    )
    return TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


def _reference(
    algo: MetaSGD, batch: TaskBatch, steps: int
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Meta-SGD's meta-gradient with plain autograd: w <- w - alpha * dL/dw (create_graph=True),
    then d(mean query loss)/d(theta) and d(...)/d(alpha)."""
    theta = [p.detach().clone().requires_grad_(True) for p in algo.params.values()]
    alpha = [a.detach().clone().requires_grad_(True) for a in algo.alpha.values()]

    def forward(w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w[0].T + w[1]) @ w[2].T + w[3]

    losses = []
    for i in range(batch.num_tasks):
        w = list(theta)
        for _ in range(steps):
            inner = ((forward(w, batch.support_x[i]) - batch.support_y[i]) ** 2).mean()
            g = torch.autograd.grad(inner, w, create_graph=True)
            w = [p - a * gp for p, a, gp in zip(w, alpha, g)]
        losses.append(((forward(w, batch.query_x[i]) - batch.query_y[i]) ** 2).mean())
    meta = torch.stack(losses).mean()
    grads = torch.autograd.grad(meta, theta + alpha)
    return meta.detach(), list(grads[: len(theta)]), list(grads[len(theta) :])


@pytest.mark.parametrize("vmap_tasks", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_of_theta_and_alpha_matches_reference(steps: int, vmap_tasks: bool) -> None:
    algo, batch = _tiny_algo(steps, vmap_tasks), _tiny_batch()
    loss, grads = algo.meta_gradient(batch)
    ref_loss, ref_theta, ref_alpha = _reference(algo, batch, steps)
    assert loss == pytest.approx(float(ref_loss), abs=1e-10)
    names = list(algo.params)
    assert list(grads) == names + ["alpha." + n for n in names]
    for name, want in zip(names, ref_theta):
        torch.testing.assert_close(grads[name], want, rtol=0, atol=1e-5)
    for name, want in zip(names, ref_alpha):
        torch.testing.assert_close(grads["alpha." + name], want, rtol=0, atol=1e-5)
        assert float(want.abs().max()) > 1e-3  # alpha really receives a gradient


def test_alpha_initialisation(suite: SinusoidSuite, backend: CPUBackend) -> None:
    alphas = []
    for _ in range(2):
        torch.manual_seed(0)
        algo = MetaSGD(MetaSGDHparams(), suite.build_model(), suite, backend)
        alphas.append(algo.alpha)
    for name, p in algo.params.items():
        a = alphas[0][name].detach()
        assert isinstance(alphas[0][name], nn.Parameter) and a.shape == p.shape and a.dtype == p.dtype
        assert float(a.min()) >= 0.005 and float(a.max()) <= 0.1
        assert torch.equal(a, alphas[1][name])  # drawn from the seeded global RNG
    every = torch.cat([a.detach().flatten() for a in alphas[0].values()])
    assert float(every.min()) < 0.01 and float(every.max()) > 0.095 and every.unique().numel() > 1000
    meta = algo.meta_parameters()
    assert set(meta) == set(algo.params) | {"alpha." + n for n in algo.params}
    assert algo.num_parameters() == 2 * sum(p.numel() for p in algo.params.values())


def test_adapt_steps_by_alpha_times_gradient(
    suite: SinusoidSuite, backend: CPUBackend, test_tasks: TaskBatch
) -> None:
    torch.manual_seed(0)
    algo = MetaSGD(MetaSGDHparams(), suite.build_model(), suite, backend)
    sx, sy = test_tasks.support_x[0], test_tasks.support_y[0]
    with torch.no_grad():
        states = algo.adapt(sx, sy, 1)
    model = suite.build_model()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(algo.params[name])
    suite.loss(model(sx), sy).backward()
    for name, p in model.named_parameters():
        expected = algo.params[name].detach() - algo.alpha[name].detach() * p.grad
        torch.testing.assert_close(states[1][name], expected, rtol=0, atol=1e-6)


def test_adapt_contract(suite: SinusoidSuite, backend: CPUBackend, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(MetaSGD(MetaSGDHparams(), suite.build_model(), suite, backend), 1)


def test_state_dict_round_trip_includes_alpha(
    suite: SinusoidSuite, backend: CPUBackend, meta_train: MetaTrain
) -> None:
    torch.manual_seed(0)
    algo = MetaSGD(MetaSGDHparams(), suite.build_model(), suite, backend)
    saved = algo.state_dict()
    meta_train(algo, 3)
    assert not torch.equal(algo.alpha["0.weight"], saved["alpha.0.weight"])
    algo.load_state_dict(saved)
    assert all(torch.equal(algo.meta_parameters()[k], saved[k]) for k in saved)


def test_registers_metasgd() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(metasgd_module)
    [specs] = manager.hook.harness_register_algorithms()
    assert [s.name for s in specs] == ["metasgd"]
    assert specs[0].second_order and specs[0].hparams is MetaSGDHparams
    defaults = MetaSGDHparams()
    assert (defaults.inner_steps, defaults.test_steps, defaults.alpha_init, defaults.meta_lr) == (
        1,
        1,
        (0.005, 0.1),
        0.001,
    )
    with pytest.raises(ValueError, match="alpha_init"):
        MetaSGDHparams(alpha_init=(0.1, 0.01))


def test_metasgd_learns_alpha_and_improves_over_its_initialisation(
    suite: SinusoidSuite, backend: CPUBackend, evaluate: Evaluate, meta_train: MetaTrain
) -> None:
    torch.manual_seed(0)
    algo = MetaSGD(MetaSGDHparams(), suite.build_model(), suite, backend)
    alpha_before = {k: v.detach().clone() for k, v in algo.alpha.items()}
    init_curve = evaluate(algo, 1)
    losses = meta_train(algo, 600)
    curve = evaluate(algo, 1)
    moved = max(float((algo.alpha[k].detach() - alpha_before[k]).abs().max()) for k in alpha_before)
    assert moved > 0.05
    assert sum(losses[-100:]) < 0.5 * sum(losses[:100])
    # Measured (seed 0, 600 iterations, 200 test tasks, K = 10): 0.53 after one step, from 4.07.
    assert curve[1] < 0.25 * init_curve[1]


def test_conv_nets_take_the_fast_path_with_the_same_meta_gradient() -> None:
    """As MAML's: harness.sequential's forward for a looped conv net, the same float64 meta-gradient of
    theta and alpha as the plain functional_call path."""
    suite = _Images(None)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "train")
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        algo = MetaSGD(MetaSGDHparams(inner_steps=2, vmap_tasks=False), suite.build_model(), suite, CPUBackend())
        assert algo.fast_forward is not None
        if not fast:
            algo.fast_forward = None
        results.append(algo.meta_gradient(batch))
    (loss_f, grads_f), (loss_p, grads_p) = results
    assert loss_f == pytest.approx(loss_p, abs=1e-12) and list(grads_f) == list(grads_p)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=0, atol=1e-11)
