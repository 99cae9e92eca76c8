"""The metaopt suite: problems with the stated spectra and data, objectives equal to their closed forms
(numpy / scipy references), episodes a pure function of (config, split, seed), test_* settings on the test
split only, the optimisation interface and clear configuration errors."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.special import logsumexp

from harness.base import Algorithm, Predictor
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites._metaopt import DIGITS_SPLIT_SEED, MetaOptSuite, digits, digits_pools
from metaharness_plugins.suites.metaopt import DIGITS_IMAGES, DIGITS_POOLS, MetaOptConfig, check


def draw(suite: MetaOptSuite, split: str = "train", n: int = 4, seed: int = 0):
    return suite.sample(n, torch.Generator().manual_seed(seed), split)


def suite_of(**config) -> MetaOptSuite:
    return MetaOptSuite(MetaOptConfig(**config))


@pytest.mark.parametrize(("dim", "condition", "samples"), [(10, 10.0, None), (10, 1e4, None), (25, 3.0, 40),
                                                           (2, 1.0, None), (1, 1.0, 5)])
def test_quadratic_hessian_has_the_condition_number_asked(dim, condition, samples):
    batch = draw(suite_of(dim=dim, condition=condition, samples=samples, dtype="float64"))
    w = batch.support_x.numpy()
    assert w.shape == (4, samples or dim, dim) and batch.support_y.shape == (4, samples or dim, 1)
    for i in range(4):
        eig = np.linalg.eigvalsh(w[i].T @ w[i])  # independent of the suite's own construction
        assert eig.max() / eig.min() == pytest.approx(condition, rel=1e-6)
        # The Hessian spans exactly [1, condition] with log-spaced eigenvalues.
        np.testing.assert_allclose(np.sort(eig), np.logspace(0, math.log10(condition), dim), rtol=1e-9)
    assert batch.query_x is batch.support_x and batch.query_y is batch.support_y  # the training loss


def test_float32_episodes_are_the_float64_ones_rounded():
    wide, narrow = draw(suite_of(condition=100.0, dtype="float64")), draw(suite_of(condition=100.0))
    assert narrow.support_x.dtype == torch.float32
    torch.testing.assert_close(narrow.support_x, wide.support_x.float(), rtol=0, atol=0)
    w = narrow.support_x[0].double()
    assert float(torch.linalg.cond(w.T @ w)) == pytest.approx(100.0, rel=1e-5)


def test_quadratic_objective_gradient_and_minimum_match_the_closed_form():
    suite = suite_of(dim=8, condition=50.0, samples=12, dtype="float64")
    batch = draw(suite)
    w, y = batch.support_x[0], batch.support_y[0]
    theta = torch.randn(8, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    wn, yn, tn = w.numpy(), y.numpy(), theta.numpy()
    params = {"theta": theta.clone().requires_grad_(True)}
    value = suite.objective(params, w, y)
    assert float(value.detach()) == pytest.approx(0.5 * np.sum((wn @ tn - yn) ** 2), rel=1e-12)
    value.backward()
    np.testing.assert_allclose(params["theta"].grad.numpy(), wn.T @ (wn @ tn - yn), rtol=1e-10)
    # The minimiser: least squares; n > dim leaves a positive residual, and the gradient vanishes there.
    best = torch.linalg.lstsq(w, y).solution
    residual = np.linalg.lstsq(wn, yn, rcond=None)[1].item()
    assert float(suite.objective({"theta": best}, w, y)) == pytest.approx(0.5 * residual, rel=1e-9)
    assert residual > 0
    grad = torch.func.grad(suite.objective)({"theta": best}, w, y)["theta"]
    assert float(grad.abs().max()) < 1e-9
    # Square W (the paper's 10 x 10): the minimum is 0.
    square = draw(suite_of(dtype="float64"))
    best = torch.linalg.lstsq(square.support_x[0], square.support_y[0]).solution
    assert float(suite.objective({"theta": best}, square.support_x[0], square.support_y[0])) < 1e-20


def test_objective_works_under_vmap_and_equals_the_loop():
    for config in ({}, {"problem": "logistic", "l2": 0.1}, {"problem": "mlp"},
                   {"problem": "mlp", "data": "synthetic"}):
        suite = suite_of(**config)
        batch = draw(suite, n=3)
        starts = [suite.initial_parameters(batch.support_x[i]) for i in range(3)]
        stacked = {k: torch.stack([s[k] for s in starts]) for k in starts[0]}
        batched = torch.func.vmap(suite.objective)(stacked, batch.support_x, batch.support_y)
        looped = torch.stack([suite.objective(starts[i], batch.support_x[i], batch.support_y[i])
                              for i in range(3)])
        torch.testing.assert_close(batched, looped)
        grads = torch.func.vmap(torch.func.grad(suite.objective))(stacked, batch.support_x, batch.support_y)
        for i in range(3):
            params = {k: v.clone().requires_grad_(True) for k, v in starts[i].items()}
            suite.objective(params, batch.support_x[i], batch.support_y[i]).backward()
            for k in params:
                torch.testing.assert_close(grads[k][i], params[k].grad)


def test_logistic_objective_is_mean_bce_plus_ridge():
    suite = suite_of(problem="logistic", dim=6, l2=0.3, dtype="float64")
    batch = draw(suite)
    x, y = batch.support_x[1].numpy(), batch.support_y[1].numpy()
    assert x.shape == (60, 6) and set(np.unique(y)) <= {0.0, 1.0}
    w = np.random.default_rng(0).normal(size=(6, 1)) * 3
    logits = x @ w
    reference = np.mean(np.logaddexp(0.0, logits) - y * logits) + 0.5 * 0.3 * np.sum(w ** 2)
    got = suite.objective({"w": torch.from_numpy(w)}, batch.support_x[1], batch.support_y[1])
    assert float(got) == pytest.approx(reference, rel=1e-12)
    assert float(suite.objective(suite.initial_parameters(batch.support_x[1]), batch.support_x[1],
                                 batch.support_y[1])) == pytest.approx(math.log(2), rel=1e-12)


def separable(x: np.ndarray, y: np.ndarray) -> bool:
    """Linear separability through the origin by an LP: is there w with (2y - 1) x . w >= 1 for every row?"""
    signs = 2 * y.ravel() - 1
    res = linprog(np.zeros(x.shape[1]), A_ub=-(signs[:, None] * x), b_ub=-np.ones(len(x)),
                  bounds=[(None, None)] * x.shape[1], method="highs")
    return res.status == 0


def test_logistic_separable_data_is_separable_and_noisy_data_is_not():
    clean = draw(suite_of(problem="logistic", separable=True, dtype="float64"))
    noisy = draw(suite_of(problem="logistic", separable=False, label_noise=0.1, dtype="float64"))
    for i in range(4):
        assert separable(clean.support_x[i].numpy(), clean.support_y[i].numpy())
        assert not separable(noisy.support_x[i].numpy(), noisy.support_y[i].numpy())
        labels = clean.support_y[i].ravel()
        assert 0.2 < float(labels.mean()) < 0.8  # a hyperplane through the origin splits Gaussian data
    # Same features and hyperplane; about 10% of the labels flipped.
    torch.testing.assert_close(clean.support_x, noisy.support_x)
    flipped = float((clean.support_y != noisy.support_y).double().mean())
    assert 0.03 < flipped < 0.2
    # The features' covariance has the condition number asked: the rows are z diag(s) V^T.
    big = draw(suite_of(problem="logistic", condition=30.0, samples=20000, dtype="float64"), n=1)
    x = big.support_x[0].numpy()
    eig = np.linalg.eigvalsh(x.T @ x / len(x))
    assert eig.max() / eig.min() == pytest.approx(30.0, rel=0.1)


def test_mlp_digits_subsets_are_deterministic_disjoint_and_scaled():
    suite = suite_of(problem="mlp")
    first, again = draw(suite, "test"), draw(suite_of(problem="mlp"), "test")
    torch.testing.assert_close(first.support_x, again.support_x, rtol=0, atol=0)
    assert torch.equal(first.support_y, again.support_y)
    assert first.support_x.shape == (4, 128, 64) and first.support_y.shape == (4, 128)
    assert first.support_y.dtype == torch.int64
    assert 0 <= int(first.support_y.min()) <= int(first.support_y.max()) <= 9
    x = first.support_x
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    torch.testing.assert_close(x * 16, torch.round(x * 16))  # the UCI pixel counts 0..16, scaled
    assert not torch.equal(draw(suite, "test", seed=1).support_x, x)
    # Pools: a partition of the 1797 images; each episode's images come from its split's pool, no repeats.
    pools = digits_pools(DIGITS_POOLS)
    together = torch.cat([pools[s] for s in ("train", "val", "test")])
    assert sorted(together.tolist()) == list(range(DIGITS_IMAGES))
    images, labels = digits(DIGITS_IMAGES)
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(images.numpy(), load_digits().data / 16.0)
    for split in ("train", "val", "test"):
        batch = draw(suite, split, n=2)
        rows = {tuple(r) for r in images[pools[split]].float().tolist()}
        for i in range(2):
            assert all(tuple(r) in rows for r in batch.support_x[i].tolist())
    assert DIGITS_SPLIT_SEED  # the permutation's seed is fixed in code


def test_mlp_cross_entropy_matches_scipy_and_starts_are_per_problem():
    suite = suite_of(problem="mlp", dtype="float64")
    batch = draw(suite, n=2)
    a, b = (suite.initial_parameters(batch.support_x[i]) for i in range(2))
    shapes = {"w1": (64, 20), "b1": (20,), "w2": (20, 10), "b2": (10,)}
    assert {k: tuple(v.shape) for k, v in a.items()} == shapes
    assert not torch.equal(a["w1"], b["w1"])  # each problem its own start
    again = suite.initial_parameters(batch.support_x[0].clone())
    assert all(torch.equal(a[k], again[k]) for k in a)  # the same problem, the same start
    assert float(a["w1"].abs().max()) <= 1 / 8 and float(a["w2"].abs().max()) <= 1 / math.sqrt(20)
    x, y = batch.support_x[0].numpy(), batch.support_y[0].numpy()
    hidden = 1 / (1 + np.exp(-(x @ a["w1"].numpy() + a["b1"].numpy())))
    logits = hidden @ a["w2"].numpy() + a["b2"].numpy()
    reference = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
    got = float(suite.objective(a, batch.support_x[0], batch.support_y[0]))
    assert got == pytest.approx(reference, rel=1e-12)


def test_episodes_are_a_pure_function_of_config_split_and_seed():
    for config in ({}, {"problem": "logistic"}, {"problem": "mlp", "data": "synthetic"}):
        one, two = draw(suite_of(**config), "val", seed=7), draw(suite_of(**config), "val", seed=7)
        torch.testing.assert_close(one.support_x, two.support_x, rtol=0, atol=0)
        torch.testing.assert_close(one.support_y, two.support_y, rtol=0, atol=0)
        assert not torch.equal(draw(suite_of(**config), "val", seed=8).support_x, one.support_x)
    # Options that only change scoring leave the problems alone.
    torch.testing.assert_close(draw(suite_of(steps=7, target_ratio=0.5), "test").support_x,
                               draw(suite_of(), "test").support_x, rtol=0, atol=0)


def test_only_the_test_split_uses_the_test_settings():
    suite = suite_of(test_dim=30, test_condition=100.0, test_steps=200, dtype="float64")
    for split in ("train", "val"):
        w = draw(suite, split).support_x[0]
        assert w.shape == (10, 10) and float(torch.linalg.cond(w.T @ w)) == pytest.approx(10.0, rel=1e-6)
    w = draw(suite, "test").support_x[0]
    assert w.shape == (30, 30) and float(torch.linalg.cond(w.T @ w)) == pytest.approx(100.0, rel=1e-6)
    assert [suite.horizon(s) for s in ("train", "val", "test")] == [100, 100, 200]
    assert [suite.adaptation_steps(s) for s in ("train", "val", "test")] == [None, 100, 200]
    assert suite.describe()["leaderboard_note"] == (
        "out of distribution: trained on quadratic dim 10 cond 10, "
        "tested on dim 30, cond 100, T = 200 (trained with T = 100)")
    assert suite_of(test_dim=100).describe()["leaderboard_note"] == (
        "out of distribution: trained on quadratic dim 10 cond 10, tested on dim 100")
    assert suite_of().describe()["leaderboard_note"] == (
        "in distribution: trained and tested on quadratic dim 10 cond 10, T = 100")
    note = suite_of(test_dim=10, test_condition=10.0).describe()["leaderboard_note"]
    assert note.startswith("in distribution")


def test_a_test_problem_of_another_kind_is_recognised_by_its_episode():
    suite = suite_of(test_problem="logistic")
    train, test = draw(suite, "train"), draw(suite, "test")
    assert set(torch.unique(test.support_y).tolist()) == {0.0, 1.0} and test.support_x.shape == (4, 100, 10)
    assert set(suite.initial_parameters(train.support_x[0])) == {"theta"}
    assert set(suite.initial_parameters(test.support_x[2])) == {"w"}
    start = suite.initial_parameters(test.support_x[2])
    assert float(suite.objective(start, test.support_x[2], test.support_y[2])) == pytest.approx(math.log(2))
    assert "tested on logistic dim 10 cond 10" in suite.describe()["leaderboard_note"]
    mlp = suite_of(test_problem="mlp")
    test = draw(mlp, "test")
    assert set(mlp.initial_parameters(test.support_x[0])) == {"w1", "b1", "w2", "b2"}
    assert "tested on mlp on digits" in mlp.describe()["leaderboard_note"]


class Iterate(Algorithm):
    """The smallest optimisation algorithm: its states are given iterates (to score through a Predictor)."""

    def meta_parameters(self):
        return {}

    def meta_train_step(self, batch):
        return 0.0

    def adapt(self, support_x, support_y, steps):
        return [self.suite.initial_parameters(support_x)] * (steps + 1)

    def predict(self, state, x):
        return self.suite.predict(state, x)


def test_score_is_the_objective_at_the_iterate_and_metric_its_data_term():
    suite = suite_of(problem="logistic", l2=0.5)
    batch = draw(suite)
    algo = Iterate(None, suite.build_model(), suite, CPUBackend())
    state = {"w": torch.full((10, 1), 0.2)}
    x, y = batch.query_x[0], batch.query_y[0]
    score = suite.score(Predictor(algo, state), x, y)
    assert not score.requires_grad
    torch.testing.assert_close(score, suite.objective(state, x, y))
    torch.testing.assert_close(suite.metric(algo.predict(state, x), y) + 0.5 * 0.5 * 0.4, score)
    assert suite.metric_name == "final_loss" and not suite.higher_is_better
    model = suite.build_model()
    assert sum(p.numel() for p in model.parameters()) == 10
    mlp = suite_of(problem="mlp").build_model()
    assert sum(p.numel() for p in mlp.parameters()) == 64 * 20 + 20 + 20 * 10 + 10


def test_trajectory_metrics_area_under_log_loss_and_steps_to_target():
    suite = suite_of()
    values = [1.0, 0.1, 0.001, 0.0]
    assert suite.trajectory_metrics(values) == {"log_auc": pytest.approx((0 - 1 - 3 - 12) / 4),
                                                "steps_to_target": 2.0}
    assert suite.trajectory_metrics([4.0, 3.0, 2.0])["steps_to_target"] == 3.0  # T + 1: not reached
    assert suite_of(target=2.5).trajectory_metrics([4.0, 3.0, 2.0])["steps_to_target"] == 2.0
    assert suite_of(target_ratio=0.75).trajectory_metrics([4.0, 3.0, 2.0])["steps_to_target"] == 1.0
    assert suite.trajectory_metrics([1.0, math.nan])["log_auc"] == math.inf
    assert set(suite.trajectory_labels) == {"log_auc", "steps_to_target"}


@pytest.mark.parametrize(("config", "message"), [
    ({"dim": 0}, "dim must be an integer from 1"),
    ({"test_dim": -3}, "test_dim must be an integer from 1"),
    ({"condition": 0.5}, "condition must be a condition number from 1"),
    ({"condition": -2.0}, "condition must be a condition number from 1"),
    ({"test_condition": 0.0}, "test_condition must be a condition number from 1"),
    ({"steps": 0}, "steps must be an integer from 1"),
    ({"test_steps": 0}, "test_steps must be an integer from 1"),
    ({"problem": "cubic"}, "problem must be one of quadratic, logistic, mlp, got 'cubic'"),
    ({"test_problem": "rosenbrock"}, "test_problem must be one of quadratic, logistic, mlp"),
    ({"data": "mnist"}, "data must be one of digits, synthetic"),
    ({"dim": 1, "condition": 10.0}, "condition must be 1 when dim is 1"),
    ({"test_dim": 1}, "test_condition must be 1 when test_dim is 1"),
    ({"samples": 5}, "samples must be >= dim for quadratics"),
    ({"samples": 20, "test_dim": 30}, "samples must be >= test_dim for quadratics"),
    ({"problem": "mlp", "samples": 300}, "samples must be at most 269 for mlp on digits"),
    ({"problem": "mlp", "test_dim": 20}, "test_dim and test_condition do not apply to mlp on digits"),
    ({"label_noise": 0.7}, "label_noise must be a flip probability in [0, 0.5]"),
    ({"label_noise": 0.0}, "label_noise must be > 0 when separable is false"),
    ({"l2": -1.0}, "l2 must be >= 0"),
    ({"target_ratio": 0.0}, "target_ratio must be in (0, 1]"),
    ({"target": -1.0}, "target must be None or an absolute loss >= 0"),
    ({"dtype": "float16"}, "dtype must be one of float32, float64"),
])
def test_config_errors_name_the_field_and_what_is_valid(config, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MetaOptConfig(**config)


def test_check_passes_where_scikit_learn_is_installed():
    assert check(MetaOptConfig(problem="mlp")) == "" and check(MetaOptConfig()) == ""
