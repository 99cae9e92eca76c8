"""MAML and first-order MAML: meta-gradients against a hand-unrolled autograd reference, the Adam
meta-update, test-time adaptation, determinism, and convergence on sinusoid regression."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness import Algorithm, TaskBatch
from harness.specs import resolve_params
from metaharness_plugins.algorithms import maml as maml_module
from metaharness_plugins.algorithms.maml import MAML, FOMAMLHparams, MAMLHparams
from metaharness_plugins.algorithms.pretrain import Pretrain, PretrainHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite
from tests.plugins.helpers import TinySuite

Evaluate = Callable[[Algorithm, int], torch.Tensor]
MetaTrain = Callable[..., list[float]]


def _tiny_model() -> nn.Module:
    # tanh rather than ReLU so that every second-derivative term of the meta-gradient is non-zero.
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _tiny_batch() -> TaskBatch:
    suite = SinusoidSuite(SinusoidConfig(shots=5, query=6))
    batch = suite.sample(4, torch.Generator().manual_seed(21), "train")
    return TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


def _reference_meta_gradient(
    model: nn.Module, batch: TaskBatch, inner_lr: float, steps: int, first_order: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MAML's meta-gradient written out with plain torch.autograd on explicit weight tensors.

    Inner step: w <- w - lr * dL_support/dw, kept in the graph (create_graph=True) for full MAML, a
    constant for first-order MAML. Outer: d(mean_i L_query(w_i))/d(initial weights).
    """
    w1, b1, w2, b2 = (p.detach().clone().requires_grad_(True) for p in model.parameters())
    initial = [w1, b1, w2, b2]

    def forward(w: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w[0].T + w[1]) @ w[2].T + w[3]

    def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((prediction - target) ** 2).mean()

    query_losses = []
    for i in range(batch.num_tasks):
        w = list(initial)
        for _ in range(steps):
            inner = mse(forward(w, batch.support_x[i]), batch.support_y[i])
            g = torch.autograd.grad(inner, w, create_graph=not first_order)
            w = [p - inner_lr * gp for p, gp in zip(w, g)]
        query_losses.append(mse(forward(w, batch.query_x[i]), batch.query_y[i]))
    meta_loss = torch.stack(query_losses).mean()
    return meta_loss, list(torch.autograd.grad(meta_loss, initial))


@pytest.mark.parametrize("vmap_tasks", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_hand_unrolled_reference(
    steps: int, first_order: bool, vmap_tasks: bool
) -> None:
    suite, batch = SinusoidSuite(SinusoidConfig()), _tiny_batch()
    hparams = MAMLHparams(inner_lr=0.1, inner_steps=steps, first_order=first_order, vmap_tasks=vmap_tasks)
    algo = MAML(hparams, _tiny_model(), suite, CPUBackend())
    loss, grads = algo.meta_gradient(batch)
    ref_loss, ref_grads = _reference_meta_gradient(_tiny_model(), batch, 0.1, steps, first_order)
    assert loss == pytest.approx(float(ref_loss.detach()), abs=1e-10)
    assert list(grads) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for got, want in zip(grads.values(), ref_grads):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_drops_a_measurable_second_order_term(steps: int) -> None:
    suite, batch = SinusoidSuite(SinusoidConfig()), _tiny_batch()
    second = MAML(MAMLHparams(inner_lr=0.1, inner_steps=steps), _tiny_model(), suite, CPUBackend())
    first = MAML(FOMAMLHparams(inner_lr=0.1, inner_steps=steps), _tiny_model(), suite, CPUBackend())
    loss_2, grads_2 = second.meta_gradient(batch)
    loss_1, grads_1 = first.meta_gradient(batch)
    assert loss_1 == pytest.approx(loss_2, abs=1e-12)  # the same forward pass ...
    diff = torch.cat([(grads_2[k] - grads_1[k]).flatten() for k in grads_2]).norm()
    scale = torch.cat([g.flatten() for g in grads_2.values()]).norm()
    assert float(diff) > 0.1 * float(scale)  # ... but a different gradient (measured: 47% and 89%)


def test_meta_train_step_is_one_adam_step_on_the_meta_gradient(
    suite: SinusoidSuite, backend: CPUBackend
) -> None:
    torch.manual_seed(0)
    algo = MAML(MAMLHparams(), suite.build_model(), suite, backend)
    batch = suite.sample(25, torch.Generator().manual_seed(0), "train")
    before = algo.state_dict()
    expected_loss, grads = algo.meta_gradient(batch)
    loss = algo.meta_train_step(batch)
    assert isinstance(loss, float) and loss == pytest.approx(expected_loss, rel=1e-6)
    # Adam's first step with bias correction moves each entry by lr * g / (|g| + eps).
    for name, p in algo.meta_parameters().items():
        assert isinstance(p, nn.Parameter) and p.grad is None
        expected = before[name] - 0.001 * grads[name] / (grads[name].abs() + 1e-8)
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_vmap_and_loop_over_tasks_agree(suite: SinusoidSuite, backend: CPUBackend) -> None:
    batch = suite.sample(25, torch.Generator().manual_seed(1), "train")
    results = []
    for vmap_tasks in (True, False):
        torch.manual_seed(0)
        results.append(
            MAML(MAMLHparams(vmap_tasks=vmap_tasks), suite.build_model(), suite, backend).meta_gradient(batch)
        )
    (loss_v, grads_v), (loss_l, grads_l) = results
    assert loss_v == pytest.approx(loss_l, rel=1e-5)
    for name in grads_v:
        torch.testing.assert_close(grads_v[name], grads_l[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hparams", [MAMLHparams(), FOMAMLHparams()], ids=["maml", "fomaml"])
def test_adapt_contract(
    hparams: MAMLHparams, suite: SinusoidSuite, backend: CPUBackend, check_adapt: Callable
) -> None:
    torch.manual_seed(0)
    check_adapt(MAML(hparams, suite.build_model(), suite, backend), 3)


def test_adapt_takes_plain_sgd_steps_at_inner_lr(
    suite: SinusoidSuite, backend: CPUBackend, test_tasks: TaskBatch
) -> None:
    torch.manual_seed(0)
    algo = MAML(MAMLHparams(inner_lr=0.05), suite.build_model(), suite, backend)
    sx, sy = test_tasks.support_x[3], test_tasks.support_y[3]
    states = algo.adapt(sx, sy, 2)
    for before, after in itertools.pairwise(states):
        model = suite.build_model()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(before[name])
        suite.loss(model(sx), sy).backward()
        for name, p in model.named_parameters():
            torch.testing.assert_close(after[name], before[name] - 0.05 * p.grad, rtol=0, atol=1e-6)


def test_training_is_deterministic_given_the_seed(
    suite: SinusoidSuite, backend: CPUBackend, meta_train: MetaTrain
) -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        algo = MAML(MAMLHparams(), suite.build_model(), suite, backend)
        losses = meta_train(algo, 20, seed=5)
        runs.append((losses, algo.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_registers_maml_and_fomaml() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(maml_module)
    specs = {spec.name: spec for result in manager.hook.harness_register_algorithms() for spec in result}
    assert set(specs) == {"maml", "fomaml"}
    assert specs["maml"].second_order and not specs["fomaml"].second_order
    assert specs["maml"].task_kinds == specs["fomaml"].task_kinds == {"regression", "classification"}
    assert specs["maml"].factory.resolve() is specs["fomaml"].factory.resolve() is MAML
    assert specs["maml"].hparams().first_order is False
    assert specs["fomaml"].hparams().first_order is True
    paper = MAMLHparams()
    assert (paper.inner_lr, paper.inner_steps, paper.test_steps, paper.meta_lr, paper.meta_batch_size) == (
        0.01,
        1,
        10,
        0.001,
        25,
    )
    assert dataclasses.replace(FOMAMLHparams(), first_order=True) == resolve_params(
        FOMAMLHparams, {}, "fomaml"
    )
    assert resolve_params(MAMLHparams, {"inner_lr": 1}, "maml").inner_lr == 1.0
    with pytest.raises(ValueError, match="inner_steps must be >= 1"):
        MAMLHparams(inner_steps=0)


ITERATIONS = 1000


@pytest.fixture(scope="module")
def init_curve(suite: SinusoidSuite, backend: CPUBackend, evaluate: Evaluate) -> torch.Tensor:
    """Test MSE after 0..10 SGD steps (lr 0.01) from the untrained initialisation of seed 0."""
    torch.manual_seed(0)
    return evaluate(MAML(MAMLHparams(), suite.build_model(), suite, backend), 10)


def test_maml_beats_its_initialisation_and_the_pretrain_baseline(
    suite: SinusoidSuite,
    backend: CPUBackend,
    evaluate: Evaluate,
    meta_train: MetaTrain,
    init_curve: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    maml = MAML(MAMLHparams(), suite.build_model(), suite, backend)
    meta_train(maml, ITERATIONS)
    maml_curve = evaluate(maml, 10)
    torch.manual_seed(0)
    pretrain = Pretrain(PretrainHparams(), suite.build_model(), suite, backend)
    meta_train(pretrain, ITERATIONS)
    pretrain_curve = evaluate(pretrain, 10)
    # Measured (seed 0, 1000 iterations, 200 test tasks, K = 10): MAML 0.66 after 10 steps, from
    # 3.96 untrained; pretrain 1.75. The paper (70k iterations, K = 5): MAML 0.35, pretrain 2.19.
    assert maml_curve[10] < 0.3 * init_curve[10]
    assert maml_curve[10] < 0.6 * pretrain_curve[10]
    assert maml_curve[1] < 0.7 * pretrain_curve[1]
    # Adaptation is what MAML is good at: the curve falls with the number of steps.
    assert maml_curve[10] < maml_curve[1] < 0.6 * maml_curve[0]


def test_fomaml_improves_clearly_over_its_initialisation(
    suite: SinusoidSuite,
    backend: CPUBackend,
    evaluate: Evaluate,
    meta_train: MetaTrain,
    init_curve: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    fomaml = MAML(FOMAMLHparams(), suite.build_model(), suite, backend)
    meta_train(fomaml, ITERATIONS)
    curve = evaluate(fomaml, 10)
    # Measured: 1.10 after 10 steps, from 3.96.
    assert curve[10] < 0.5 * init_curve[10]


class _Images(TinySuite):
    """3-way classification of 1 x 12 x 12 float64 images, for a small conv net with batch norm."""

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        batch = super().sample(n_tasks, generator, split)
        images = lambda n: torch.randn(n_tasks, n, 1, 12, 12, generator=generator, dtype=torch.float64)
        return TaskBatch(images(6), batch.support_y, images(6), batch.query_y)

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(36, 3)).double()


@pytest.mark.parametrize(("steps", "first_order"), [(1, False), (2, False), (1, True)])
def test_conv_nets_take_the_fast_path_with_the_same_meta_gradient(steps: int, first_order: bool) -> None:
    """Looping over a conv net's tasks on the CPU, meta-training runs through harness.sequential: float64
    meta-loss, meta-gradient and Adam steps equal the plain functional_call path's."""
    suite = _Images(None)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "train")
    hparams = MAMLHparams(inner_lr=0.5, inner_steps=steps, first_order=first_order, meta_lr=0.01, vmap_tasks=False)
    algos = []
    for fast in (True, False):
        torch.manual_seed(0)
        algo = MAML(hparams, suite.build_model(), suite, CPUBackend())
        assert algo.fast_forward is not None
        if not fast:
            algo.fast_forward = None
        algos.append(algo)
    (loss_f, grads_f), (loss_p, grads_p) = (a.meta_gradient(batch) for a in algos)
    assert loss_f == pytest.approx(loss_p, abs=1e-12)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=0, atol=1e-11)
    for _ in range(2):
        assert algos[0].meta_train_step(batch) == pytest.approx(algos[1].meta_train_step(batch), abs=1e-12)
    # A conv bias before batch norm changes nothing (the norm subtracts it): its gradient is rounding noise,
    # which Adam's normalised step turns into +-lr either way; every other tensor moves alike.
    for name, p in algos[1].meta_parameters().items():
        if name not in ("0.bias", "4.bias"):
            torch.testing.assert_close(algos[0].meta_parameters()[name], p, rtol=0, atol=1e-11)


def test_the_fast_path_is_only_for_looped_conv_nets(suite: SinusoidSuite, backend: CPUBackend) -> None:
    images = _Images(None)
    assert MAML(MAMLHparams(), suite.build_model(), suite, backend).fast_forward is None  # an MLP
    assert MAML(FOMAMLHparams(), images.build_model(), images, backend).fast_forward is None  # vmapped
    # Second order through batch norm is never vmapped (harness.functional), so it is looped, and fast.
    assert MAML(MAMLHparams(), images.build_model(), images, backend).fast_forward is not None
