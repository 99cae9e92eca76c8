"""Learned optimisers (lstm-optimizer, metasgd-optimizer, learned-adam, sgd-hd, l2l-optimizer): preprocessing,
meta-gradients against finite differences, learning, determinism, other dimensions at test, end to end."""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, replace

import pytest
import torch
from torch import Tensor, nn

from harness.base import TaskSuite
from harness.specs import TaskBatch
from metaharness_plugins.algorithms import learned_optimizers as lo
from metaharness_plugins.algorithms._learned_optimizers import (
    SGDHD,
    L2LOptimizer,
    LearnedAdam,
    LSTMOptimizer,
    MetaSGDOptimizer,
    preprocess_gradient,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: intra-op threads only add synchronisation, which on a busy 2-core machine
    costs 20x (measured: 0.11 s against 2.4 s per LSTM meta-iteration). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _CPU:
    device = torch.device("cpu")


@dataclass(frozen=True)
class QuadConfig:
    dim: int = 3
    test_dim: int | None = None
    samples: int = 4
    steps: int = 5
    dtype: torch.dtype = torch.float64


class Quadratics(TaskSuite):
    """A tiny stand-in for the metaopt suite's quadratics: f(theta) = 0.5 ||W theta - y||^2, W entries
    N(0, 1/n) (Hessian eigenvalues in about [0, 4]), y ~ N(0, I), theta_0 = 0."""

    metric_name = "final_loss"

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        c = self.config
        dim = c.test_dim if split == "test" and c.test_dim else c.dim
        n = max(c.samples, dim)
        w = torch.randn(n_tasks, n, dim, generator=generator, dtype=c.dtype) / math.sqrt(n)
        y = torch.randn(n_tasks, n, 1, generator=generator, dtype=c.dtype)
        return TaskBatch(w, y, w, y)

    def initial_parameters(self, support_x: Tensor) -> dict[str, Tensor]:
        return {"theta": support_x.new_zeros(support_x.shape[-1])}

    def objective(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * ((x @ params["theta"] - y.squeeze(-1)) ** 2).sum()

    def horizon(self, split: str) -> int:
        return self.config.steps

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        return ((prediction - target) ** 2).mean()

    metric = loss


def build(cls: type, hparams: object, suite: TaskSuite, seed: int = 0):
    torch.manual_seed(seed)
    return cls(hparams, suite.build_model(), suite, _CPU())


ALL = [
    (LSTMOptimizer, lo.LSTMOptimizerHparams),
    (MetaSGDOptimizer, lo.MetaSGDOptimizerHparams),
    (LearnedAdam, lo.LearnedAdamHparams),
    (SGDHD, lo.SGDHDHparams),
]


def test_preprocessing_matches_the_papers_formula() -> None:
    p = 10.0
    values = [1.0, 100.0, -math.exp(-5), 1e-6, 0.0, -1e-5, math.exp(-10) * 1.0001]
    expected = []
    for g in values:  # appendix A of Andrychowicz et al. 2016, written out per case
        if abs(g) >= math.exp(-p):
            expected.append((math.log(abs(g)) / p, math.copysign(1.0, g) if g else 0.0))
        else:
            expected.append((-1.0, math.exp(p) * g))
    got = preprocess_gradient(torch.tensor(values, dtype=torch.float64), p)
    assert got.shape == (len(values), 2)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    # Hand values: log(100)/10, the -0.5 of e^-5, e^10 * 1e-6.
    assert got[1, 0].item() == pytest.approx(0.46051701859880917)
    assert got[2].tolist() == pytest.approx([-0.5, -1.0])
    assert got[3].tolist() == pytest.approx([-1.0, 0.022026465794806718])


def _directional_check(algo, batch: TaskBatch, steps: int, directions: int = 3, eps: float = 1e-6) -> Tensor:
    """Compare the unrolled meta-gradient with central differences along random directions; returns it."""
    def meta_loss() -> Tensor:
        params = {k: v.requires_grad_() for k, v in algo.initial(batch.support_x).items()}
        return algo.truncation(batch.support_x, batch.support_y, params, algo.init_state(params), 0, steps)[0]

    names = list(algo.meta_parameters())
    grads = torch.autograd.grad(meta_loss(), [algo.meta_parameters()[n] for n in names])
    gen = torch.Generator().manual_seed(1)
    for _ in range(directions):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype)
                     for n, p in algo.meta_parameters().items()}
        analytic = sum((g * direction[n]).sum() for n, g in zip(names, grads))
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for n, p in algo.meta_parameters().items():
                    p.add_(sign * eps * direction[n])
            values.append(meta_loss().item())
            with torch.no_grad():
                for n, p in algo.meta_parameters().items():
                    p.sub_(sign * eps * direction[n])
        numeric = (values[0] - values[1]) / (2 * eps)
        assert analytic.item() == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("cls,hp", ALL, ids=[c.__name__ for c, _ in ALL])
def test_unrolled_meta_gradient_equals_finite_differences(cls: type, hp: type) -> None:
    suite = Quadratics(QuadConfig())
    hparams = hp(second_order=True)
    if cls is SGDHD:
        hparams = replace(hparams, hyper_lr_init=0.05)  # big enough that the hypergradient term matters
    algo = build(cls, hparams, suite)
    batch = suite.sample(2, torch.Generator().manual_seed(0), "train")
    _directional_check(algo, batch, steps=5)


def test_lstm_first_order_drops_the_second_order_term() -> None:
    suite = Quadratics(QuadConfig())
    batch = suite.sample(2, torch.Generator().manual_seed(0), "train")
    exact = build(LSTMOptimizer, lo.LSTMOptimizerHparams(second_order=True), suite)
    full = _directional_check(exact, batch, 5)
    first = build(LSTMOptimizer, lo.LSTMOptimizerHparams(second_order=False), suite)
    params = {k: v.requires_grad_() for k, v in first.initial(batch.support_x).items()}
    loss = first.truncation(batch.support_x, batch.support_y, params, first.init_state(params), 0, 5)[0]
    grads = torch.autograd.grad(loss, list(first.meta_parameters().values()))
    approx = torch.cat([g.reshape(-1) for g in grads])
    # The Hessian terms are gone: a difference far above the 1e-5 to which the exact one matches finite
    # differences; small, since the untrained LSTM barely reacts to its input (0.1-scaled, log-preprocessed).
    relative = ((approx - full).norm() / full.norm()).item()
    assert 1e-4 < relative < 0.1


def test_first_order_gradient_is_detached_optimizee_gradient() -> None:
    """First order: the meta-gradient is that of the unroll with each optimizee gradient a constant. Check it
    against finite differences of a hand-written metasgd unroll that plugs in the recorded gradients."""
    suite = Quadratics(QuadConfig())
    batch = suite.sample(1, torch.Generator().manual_seed(3), "train")
    algo = build(MetaSGDOptimizer, lo.MetaSGDOptimizerHparams(momentum=True), suite)
    w, y = batch.support_x[0], batch.support_y[0].squeeze(-1)
    params = {k: v.requires_grad_() for k, v in algo.initial(batch.support_x).items()}
    loss = algo.truncation(batch.support_x, batch.support_y, params, algo.init_state(params), 0, 4)[0]
    got = torch.autograd.grad(loss, [algo.net.log_lr["theta"], algo.net.logit_momentum["theta"]])

    def unroll(a: float, b: float, frozen: list[Tensor] | None) -> tuple[float, list[Tensor]]:
        theta, v, losses, seen = torch.zeros(w.shape[1], dtype=w.dtype), 0.0, [], []
        for k in range(4):
            g = w.T @ (w @ theta - y) if frozen is None else frozen[k]
            seen.append(g)
            v = 1 / (1 + math.exp(-b)) * v + g
            theta = theta - math.exp(a) * v
            losses.append(0.5 * ((w @ theta - y) ** 2).sum())
        return float(torch.stack(losses).mean()), seen

    a, b = algo.net.log_lr["theta"].item(), algo.net.logit_momentum["theta"].item()
    _, recorded = unroll(a, b, None)
    eps = 1e-6
    da = (unroll(a + eps, b, recorded)[0] - unroll(a - eps, b, recorded)[0]) / (2 * eps)
    db = (unroll(a, b + eps, recorded)[0] - unroll(a, b - eps, recorded)[0]) / (2 * eps)
    assert got[0].item() == pytest.approx(da, rel=1e-6)
    assert got[1].item() == pytest.approx(db, rel=1e-6)


def test_learned_adam_meta_gradient_is_finite_where_a_gradient_is_always_zero() -> None:
    """A coordinate the objective ignores (a blank pixel's weight) has v = 0: sqrt's derivative there is inf,
    and the meta-gradient must not become 0 * inf = nan."""
    suite = Quadratics(QuadConfig())
    batch = suite.sample(2, torch.Generator().manual_seed(0), "train")
    batch.support_x[:, :, 0] = 0.0
    algo = build(LearnedAdam, lo.LearnedAdamHparams(), suite)
    params = {k: v.requires_grad_() for k, v in algo.initial(batch.support_x).items()}
    loss = algo.truncation(batch.support_x, batch.support_y, params, algo.init_state(params), 0, 4)[0]
    grads = torch.autograd.grad(loss, list(algo.meta_parameters().values()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("transform", ["coordinatewise", "kronecker", "metacurvature"])
def test_l2l_one_step_meta_gradient_equals_finite_differences(transform: str) -> None:
    """learn2learn detaches the parameters every step: the transform's gradient after a step is that of
    phi -> f(theta - lr T_phi(grad f(theta))) with theta fixed."""
    suite = Quadratics(QuadConfig())
    algo = build(L2LOptimizer, lo.L2LOptimizerHparams(transform=transform, lr=0.3), suite)
    with torch.no_grad():  # move off the identity start so every weight has a gradient
        gen = torch.Generator().manual_seed(5)
        for p in algo.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
    x, y = batch.support_x[0], batch.support_y[0]

    def one_step() -> Tensor:
        holder, opt = algo.optimizer_for({"theta": torch.full((3,), 0.2, dtype=torch.float64)})
        suite.objective(holder.params(), x, y).backward()
        opt.step()
        return suite.objective(holder.params(), x, y)

    params = list(algo.net.parameters())
    for p in params:
        p.grad = None
    one_step().backward()
    grads = [p.grad.clone() for p in params]
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    eps, values = 1e-6, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        values.append(one_step().item())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    assert analytic == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-5)


def _final_losses(states_of, suite: Quadratics, episodes: TaskBatch) -> float:
    finals = []
    for i in range(episodes.num_tasks):
        states = states_of(episodes.support_x[i], episodes.support_y[i])
        finals.append(float(suite.objective(states[-1], episodes.support_x[i], episodes.support_y[i])))
    return sum(finals) / len(finals)


def _sgd(suite: Quadratics, lr: float, steps: int):
    def run(x: Tensor, y: Tensor) -> list[dict[str, Tensor]]:
        theta = suite.initial_parameters(x)["theta"]
        states = [{"theta": theta}]
        for _ in range(steps):
            theta = theta - lr * (x.T @ (x @ theta - y.squeeze(-1)))
            states.append({"theta": theta})
        return states
    return run


LEARNING = [
    (LSTMOptimizer, lo.LSTMOptimizerHparams(meta_batch_size=4, unroll=10, meta_lr=0.005), 100),
    (MetaSGDOptimizer, lo.MetaSGDOptimizerHparams(meta_batch_size=4, unroll=10, meta_lr=0.05), 60),
    (LearnedAdam, lo.LearnedAdamHparams(meta_batch_size=4, unroll=10, meta_lr=0.05), 60),
    (SGDHD, lo.SGDHDHparams(meta_batch_size=4, unroll=10, meta_lr=0.05), 60),
    (L2LOptimizer, lo.L2LOptimizerHparams(meta_batch_size=4, lr=0.1, meta_lr=0.01), 60),
]


@pytest.mark.parametrize("cls,hparams,iterations", LEARNING, ids=[c.__name__ for c, _, _ in LEARNING])
def test_meta_training_beats_untrained_and_sgd_on_held_out_quadratics(cls: type, hparams: object,
                                                                      iterations: int) -> None:
    suite = Quadratics(QuadConfig(dim=10, samples=10, steps=20, dtype=torch.float32))
    held_out = suite.sample(32, torch.Generator().manual_seed(123), "test")
    algo = build(cls, hparams, suite)
    untrained = _final_losses(lambda x, y: algo.adapt(x, y, 20), suite, held_out)
    gen = torch.Generator().manual_seed(7)
    start = time.perf_counter()
    for _ in range(iterations):
        loss = algo.meta_train_step(suite.sample(hparams.meta_batch_size, gen, "train"))
        assert math.isfinite(loss)
    elapsed = time.perf_counter() - start
    trained = _final_losses(lambda x, y: algo.adapt(x, y, 20), suite, held_out)
    sgd = _final_losses(_sgd(suite, 0.1, 20), suite, held_out)
    assert trained < untrained and trained < sgd, (trained, untrained, sgd, elapsed)


@pytest.mark.parametrize("cls,hp", [*ALL, (L2LOptimizer, lo.L2LOptimizerHparams)],
                         ids=[c.__name__ for c, _ in ALL] + ["L2LOptimizer"])
def test_same_seed_same_numbers_and_other_dimensions_at_test(cls: type, hp: type) -> None:
    suite = Quadratics(QuadConfig(test_dim=7, dtype=torch.float32))
    runs = []
    for _ in range(2):
        algo = build(cls, hp(meta_batch_size=3), suite)
        gen = torch.Generator().manual_seed(0)
        losses = [algo.meta_train_step(suite.sample(3, gen, "train")) for _ in range(2)]
        test = suite.sample(1, torch.Generator().manual_seed(1), "test")
        states = algo.adapt(test.support_x[0], test.support_y[0], 6)
        runs.append((losses, torch.stack([s["theta"] for s in states])))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=0, atol=0)
    # The test problems have 7 coordinates, the training ones 3: every optimiser here follows.
    assert runs[0][1].shape == (7, 7) and torch.isfinite(runs[0][1]).all()
    assert len(states) == 7 and all(not s["theta"].requires_grad for s in states)


def test_shape_bound_l2l_transforms_refuse_another_dimension() -> None:
    suite = Quadratics(QuadConfig(test_dim=5))
    algo = build(L2LOptimizer, lo.L2LOptimizerHparams(transform="kronecker"), suite)
    test = suite.sample(1, torch.Generator().manual_seed(1), "test")
    built = r"built for \{'theta': \(3,\)\} and cannot optimise 'theta' of shape \(5,\)"
    with pytest.raises(ValueError, match=built):
        algo.adapt(test.support_x[0], test.support_y[0], 2)


class TwoBlocks(Quadratics):
    """The same quadratics with theta split into two named tensors."""

    def initial_parameters(self, support_x: Tensor) -> dict[str, Tensor]:
        return {"a": support_x.new_zeros(1), "b": support_x.new_zeros(support_x.shape[-1] - 1)}

    def objective(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return super().objective({"theta": torch.cat([params["a"], params["b"]])}, x, y)


def test_tensors_are_matched_by_name_then_by_position_and_chosen_values_are_reported() -> None:
    suite = Quadratics(QuadConfig())
    algo = build(LearnedAdam, lo.LearnedAdamHparams(lr_init=0.05), suite)
    assert algo.describe()["chosen"] == pytest.approx({"lr": 0.05, "beta1": 0.9, "beta2": 0.999})
    assert build(SGDHD, lo.SGDHDHparams(), suite).describe()["chosen"] == pytest.approx(
        {"lr0": 0.01, "hyper_lr": 1e-5})
    assert set(build(MetaSGDOptimizer, lo.MetaSGDOptimizerHparams(), suite).describe()["chosen"]) == {
        "lr", "momentum"}
    # One tensor at meta-train: a problem whose tensor has another name (logistic's `w`) uses it.
    episode = suite.sample(1, torch.Generator().manual_seed(0), "test")
    before = algo.adapt(episode.support_x[0], episode.support_y[0], 3)
    renamed = Quadratics(QuadConfig())
    renamed.initial_parameters = lambda x: {"w": x.new_zeros(x.shape[-1])}
    renamed.objective = lambda params, x, y: suite.objective({"theta": params["w"]}, x, y)
    algo.suite = renamed
    after = algo.adapt(episode.support_x[0], episode.support_y[0], 3)
    torch.testing.assert_close(torch.stack([s["w"] for s in after]),
                               torch.stack([s["theta"] for s in before]))
    two = build(MetaSGDOptimizer, lo.MetaSGDOptimizerHparams(), TwoBlocks(QuadConfig()))
    assert two.match_names(["a", "b"]) == {"a": "a", "b": "b"}
    assert two.match_names(["w1", "b1"]) == {"w1": "a", "b1": "b"}
    with pytest.raises(ValueError, match=r"on parameters \['a', 'b'\] and cannot match .*\['w'\]"):
        two.match_names(["w"])
    two.adapt(episode.support_x[0], episode.support_y[0], 2)


@pytest.mark.parametrize("hp,field,value", [
    (lo.LSTMOptimizerHparams, "unroll", 0), (lo.LSTMOptimizerHparams, "hidden", 0),
    (lo.MetaSGDOptimizerHparams, "momentum_init", 1.0), (lo.LearnedAdamHparams, "beta2_init", 1.0),
    (lo.SGDHDHparams, "hyper_lr_init", 0.0), (lo.L2LOptimizerHparams, "transform", "dense"),
])
def test_bad_hparams_name_the_field(hp: type, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        hp(**{field: value})


@pytest.mark.skipif(importlib.util.find_spec("metaharness_plugins.suites._metaopt") is None,
                    reason="the metaopt suite is not written yet")
def test_end_to_end_on_the_metaopt_suite() -> None:
    from harness.cells import run_one
    from harness.registry import build_plugin_manager
    from harness.specs import Budget, Cell

    registry = build_plugin_manager(entry_points=False)
    budget = Budget(iterations=3, val_interval=3, val_episodes=2, test_episodes=3)
    config = (("dim", 4), ("steps", 10), ("test_dim", 6))
    for name, hparams in [("lstm-optimizer", (("meta_batch_size", 2), ("unroll", 5))),
                          ("learned-adam", (("meta_batch_size", 2), ("unroll", 5))),
                          ("l2l-optimizer", (("meta_batch_size", 2),))]:
        record = run_one(Cell(name, hparams, "metaopt", config, "cpu", 0, budget), registry, in_process=True)
        assert record["status"] == "ok", record.get("traceback", record.get("reason"))
        assert record["metric"]["final_step"] == 10 and math.isfinite(record["metric"]["mean"])
