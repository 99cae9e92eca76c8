"""The closed-form baselines: least squares against numpy's solver and the pseudo-inverse, ridge against its
normal equations and the centred-data identity, leave-one-out against brute-force refits, the Bayes-optimal
penalty on the linear-regression suite, the grid's checks, and a real cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.base import Predictor
from harness.cells import run_one
from harness.registry import build_plugin_manager
from harness.specs import Budget, Cell
from metaharness_plugins.algorithms._closed_form import LeastSquares, Ridge
from metaharness_plugins.algorithms.closed_form import LAM_GRID, LeastSquaresHparams, RidgeHparams, check
from metaharness_plugins.suites._linear_regression import LinearRegressionSuite
from metaharness_plugins.suites.linear_regression import LinearRegressionConfig
from metaharness_plugins.suites.sinusoid import SinusoidConfig

REGISTRY = build_plugin_manager(entry_points=False)


def make(cls, hparams, backend, **config):
    suite = LinearRegressionSuite(LinearRegressionConfig(**config))
    return cls(hparams, suite.build_model(), suite, backend), suite


def points(k: int, d: int, outputs: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, d, generator=g, dtype=torch.float64)
    return x, torch.randn(k, outputs, generator=g, dtype=torch.float64)


def with_ones(x: torch.Tensor) -> np.ndarray:
    return np.hstack([x.numpy(), np.ones((x.shape[0], 1))])


@pytest.mark.parametrize(("bias", "outputs"), [(True, 1), (False, 1), (True, 3)])
def test_least_squares_equals_numpy(backend, bias, outputs):
    algo, _ = make(LeastSquares, LeastSquaresHparams(bias=bias), backend, dim=4)
    x, y = points(12, 4, outputs)
    state = algo.adapt(x, y, 2)[0]
    a = with_ones(x) if bias else x.numpy()
    np.testing.assert_allclose(state.coef.numpy(), np.linalg.lstsq(a, y.numpy(), rcond=None)[0], atol=1e-10)
    q = torch.randn(5, 4, dtype=torch.float64)
    expected = (with_ones(q) if bias else q.numpy()) @ np.linalg.lstsq(a, y.numpy(), rcond=None)[0]
    np.testing.assert_allclose(algo.predict(state, q).numpy(), expected, atol=1e-10)
    assert algo.predict(state, q.float()).dtype == torch.float32


def test_underdetermined_least_squares_is_the_minimum_norm_interpolant(backend):
    algo, _ = make(LeastSquares, LeastSquaresHparams(), backend, dim=6)
    x, y = points(3, 6)
    coef = algo.adapt(x, y, 0)[0].coef
    np.testing.assert_allclose(coef.numpy(), np.linalg.pinv(with_ones(x)) @ y.numpy(), atol=1e-10)
    np.testing.assert_allclose(algo.predict(algo.adapt(x, y, 0)[0], x).numpy(), y.numpy(), atol=1e-10)


def test_vector_targets_keep_their_shape(backend):
    algo, _ = make(LeastSquares, LeastSquaresHparams(), backend, dim=2)
    x, y = points(6, 2)
    state = algo.adapt(x, y[:, 0], 0)[0]
    assert algo.predict(state, x).shape == (6,)


def test_noise_free_linear_tasks_are_recovered_exactly(backend):
    algo, suite = make(LeastSquares, LeastSquaresHparams(), backend, dim=3, shots=5, noise=0.0)
    batch = suite.sample(20, torch.Generator().manual_seed(0), "test")
    for i in range(20):
        state = algo.adapt(batch.support_x[i], batch.support_y[i], 0)[0]
        assert float(suite.metric(algo.predict(state, batch.query_x[i]), batch.query_y[i])) < 1e-9


@pytest.mark.parametrize("lam", [0.3, 5.0])
def test_ridge_with_a_free_intercept_equals_ridge_on_centred_data(backend, lam):
    """The classical identity: an unpenalised intercept is the same fit as ridge without intercept on
    centred inputs and targets, b = mean(y) - mean(x) w."""
    algo, _ = make(Ridge, RidgeHparams(lam=lam), backend, dim=3)
    x, y = points(7, 3, outputs=2)
    coef = algo.adapt(x, y, 0)[0].coef.numpy()
    xc, yc = x.numpy() - x.numpy().mean(0), y.numpy() - y.numpy().mean(0)
    w = np.linalg.solve(xc.T @ xc + lam * np.eye(3), xc.T @ yc)
    b = y.numpy().mean(0) - x.numpy().mean(0) @ w
    np.testing.assert_allclose(coef, np.vstack([w, b]), atol=1e-10)


def test_ridge_with_the_bias_penalised_solves_the_full_normal_equations(backend):
    algo, _ = make(Ridge, RidgeHparams(lam=0.7, penalise_bias=True), backend, dim=3)
    x, y = points(5, 3)
    a = with_ones(x)
    expected = np.linalg.solve(a.T @ a + 0.7 * np.eye(4), a.T @ y.numpy())
    np.testing.assert_allclose(algo.adapt(x, y, 0)[0].coef.numpy(), expected, atol=1e-10)


def test_ridge_at_zero_penalty_is_least_squares_even_when_underdetermined(backend):
    algo, _ = make(Ridge, RidgeHparams(lam=0.0), backend, dim=5)
    x, y = points(3, 5)
    np.testing.assert_allclose(algo.adapt(x, y, 0)[0].coef.numpy(), np.linalg.pinv(with_ones(x)) @ y.numpy(),
                               atol=1e-10)


def brute_force_loo(x: np.ndarray, y: np.ndarray, lam: float) -> float:
    """Leave-one-out MSE by K refits of ridge with a free intercept (numpy)."""
    errors = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        a = np.hstack([x[keep], np.ones((keep.sum(), 1))])
        penalty = lam * np.diag([1.0] * x.shape[1] + [0.0])
        coef = np.linalg.solve(a.T @ a + penalty, a.T @ y[keep])
        errors.append(float(((np.append(x[i], 1.0) @ coef - y[i]) ** 2).sum()))
    return float(np.mean(errors)) / y.shape[1]


def test_leave_one_out_matches_brute_force_refits_and_chooses_their_best(backend):
    algo, _ = make(Ridge, RidgeHparams(lam_grid=(0.01, 0.1, 1.0, 10.0)), backend, dim=3)
    chosen = []
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        y = x @ torch.randn(3, 1, generator=g, dtype=torch.float64) + 2.0 * torch.randn(8, 1, generator=g,
                                                                                      dtype=torch.float64)
        a = torch.from_numpy(with_ones(x))
        coef, hat = algo.solve(a, y, torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64))
        shortcut = algo.loo_scores(a, y, coef, hat)
        brute = [brute_force_loo(x.numpy(), y.numpy(), lam) for lam in (0.01, 0.1, 1.0, 10.0)]
        np.testing.assert_allclose(shortcut, brute, rtol=1e-9)
        best = (0.01, 0.1, 1.0, 10.0)[int(np.argmin(brute))]
        state = algo.adapt(x, y, 0)[0]
        expected = make(Ridge, RidgeHparams(lam=best), backend, dim=3)[0].adapt(x, y, 0)[0]
        np.testing.assert_allclose(state.coef.numpy(), expected.coef.numpy(), atol=1e-12)
        chosen.append(best)
    info = algo.describe()
    assert info["chosen"] == {"lam": float(np.median(chosen))}
    assert info["lam_choices"]["episodes"] == 6 and info["lam_choices"]["min"] == min(chosen)
    assert make(Ridge, RidgeHparams(lam=1.0), backend)[0].describe() == {}


def test_the_default_grid_is_half_decades_and_zero_is_scored_by_its_limit(backend):
    assert LAM_GRID[0] == pytest.approx(1e-4) and LAM_GRID[-1] == pytest.approx(1e3) and len(LAM_GRID) == 15
    algo, _ = make(Ridge, RidgeHparams(lam_grid=(0.0, 1.0)), backend, dim=1)
    x, y = points(2, 1)  # two points, two coefficients: lam = 0 interpolates, its LOO residual is undefined
    algo.adapt(x, y, 0)
    assert algo.choices == [1.0]


def test_the_bayes_penalty_beats_least_squares_and_other_penalties(backend):
    """With w, b ~ N(0, s^2) and support noise sigma, ridge at lam = sigma^2 / s^2, bias penalised, is the
    posterior mean: no learner has a lower expected query MSE (checked against lam x10, /10 and lam = 0)."""
    config = {"dim": 4, "shots": 6, "noise": 0.5, "weight_scale": 1.0, "bias_scale": 1.0, "test_query": 50}
    suite = LinearRegressionSuite(LinearRegressionConfig(**config))
    batch = suite.sample(1500, torch.Generator().manual_seed(0), "test")
    bayes = suite.config.bayes_lambda
    assert bayes == pytest.approx(0.25)
    means = {}
    for lam in (0.0, bayes / 10, bayes, bayes * 10):
        algo = Ridge(RidgeHparams(lam=lam, penalise_bias=True), suite.build_model(), suite, backend)
        errors = [float(suite.metric(algo.predict(algo.adapt(batch.support_x[i], batch.support_y[i], 0)[0],
                                                  batch.query_x[i]), batch.query_y[i])) for i in range(1500)]
        means[lam] = float(np.mean(errors))
    assert min(means, key=means.get) == bayes
    assert means[0.0] > 1.2 * means[bayes]


def test_derivative_of_the_fit_is_its_slope(backend):
    algo, _ = make(LeastSquares, LeastSquaresHparams(), backend)
    x = torch.linspace(-1, 1, 5)[:, None]
    state = algo.adapt(x, 3.0 * x + 1.0, 0)[0]
    first, second = Predictor(algo, state).derivatives(torch.zeros(4, 1), 2)
    np.testing.assert_allclose(first.numpy(), 3.0, atol=1e-6)
    assert torch.equal(second, torch.zeros(4, 1))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lam": -1.0}, "lam must be None .* or a penalty >= 0"),
    ({"lam_grid": ()}, "lam_grid must be a list of 1"),
    ({"lam_grid": (1.0, -2.0)}, "lam_grid must hold penalties >= 0"),
    ({"bias": False, "penalise_bias": True}, "penalise_bias=true needs bias=true"),
])
def test_bad_hyper_parameters_say_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RidgeHparams(**kwargs)


def test_bad_inputs_are_rejected_with_the_shapes(backend):
    algo, _ = make(LeastSquares, LeastSquaresHparams(), backend)
    with pytest.raises(ValueError, match=r"support_x must be shaped \[K, d\]"):
        algo.adapt(torch.zeros(3, 1, 2, 2), torch.zeros(3, 1), 0)
    with pytest.raises(ValueError, match="real-valued targets"):
        algo.adapt(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="one target"):
        algo.adapt(torch.zeros(3, 2), torch.zeros(4, 1), 0)
    state = algo.adapt(torch.randn(3, 2), torch.randn(3, 1), 0)[0]
    with pytest.raises(ValueError, match="2-dimensional inputs"):
        algo.predict(state, torch.zeros(4, 3))


def test_the_grid_check_needs_two_points_for_leave_one_out(backend):
    assert "needs at least 2 support points" in check(RidgeHparams(), "sinusoid", SinusoidConfig(shots=1))
    assert "K = 1" in check(RidgeHparams(), "sinusoid", SinusoidConfig(shots=5, test_shots=1))
    assert check(RidgeHparams(lam=1.0), "sinusoid", SinusoidConfig(shots=1)) == ""
    assert check(LeastSquaresHparams(), "sinusoid", SinusoidConfig(shots=1)) == ""
    with pytest.raises(ValueError, match="leave-one-out"):
        make(Ridge, RidgeHparams(), backend, shots=1)


def test_nothing_is_meta_learned(backend):
    algo, suite = make(Ridge, RidgeHparams(), backend)
    assert algo.meta_trains is False and algo.meta_parameters() == {} and algo.num_parameters() == 0
    assert algo.meta_train_step(suite.sample(2, torch.Generator().manual_seed(0), "train")) == 0.0


@pytest.mark.parametrize("algorithm", ["least-squares", "ridge"])
def test_a_real_cell_goes_straight_to_the_test_episodes(algorithm):
    spec = REGISTRY.algorithms[algorithm].spec
    assert spec.task_kinds == frozenset({"regression"}) and spec.paper
    budget = Budget(iterations=50, val_interval=10, val_episodes=5, test_episodes=20, threads=1)
    record = run_one(Cell(algorithm, (), "linear-regression", (("dim", 2),), "cpu", 0, budget), REGISTRY,
                     in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    assert record["timings"]["iterations"] == 0 and record["params"] == 0
    assert record["metric"]["mean"] < 0.05  # K = 10 noisy points of a 2-d line: near the noise floor
