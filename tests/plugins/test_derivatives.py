"""The derivatives suite: autograd ground truth against each family's closed form, episode layout,
determinism, noise, configuration errors, scoring through `harness.base.Predictor`, and a real MAML cell."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pluggy
import pytest
import torch
from scipy.stats import norm
from torch import nn

import harness.hookspecs
from harness.base import Algorithm, Predictor
from harness.cells import run_one
from harness.errors import UsageError
from harness.registry import build_plugin_manager
from harness.specs import Budget, Cell, TaskSuiteSpec, resolve_params
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites import derivatives
from metaharness_plugins.suites._derivatives import (
    FAMILY_CLASSES,
    PRIMITIVES,
    VARIANCE_FLOOR,
    DerivativesSuite,
    values_and_derivatives,
)
from metaharness_plugins.suites.derivatives import FAMILIES, DerivativesConfig

TASKS = 64


def truth(family: str, seed: int = 0, points: int = 50
          ) -> tuple[dict[str, torch.Tensor], np.ndarray, list[np.ndarray]]:
    """Parameters of TASKS tasks, points x [T, N] in the family's interval, and [f, f', f''] by autograd."""
    fam = FAMILY_CLASSES[family]
    generator = torch.Generator().manual_seed(seed)
    params = fam.draw(TASKS, generator)
    low, high = fam.interval
    x = low + (high - low) * torch.rand(TASKS, points, 1, generator=generator, dtype=torch.float64)
    values = values_and_derivatives(fam, params, x, 2)
    return params, x[..., 0].numpy(), [v[..., 0].numpy() for v in values]


def p(params: dict[str, torch.Tensor], name: str) -> np.ndarray:
    """A parameter as a NumPy array broadcastable against points [T, N]."""
    return params[name].reshape(TASKS, -1).numpy()


# --- ground truth against closed forms (float64) -------------------------------------------------


def test_family_names_agree_with_the_plugin_module() -> None:
    assert tuple(FAMILY_CLASSES) == FAMILIES


def test_polynomial_matches_numpy_polyder() -> None:
    params, x, (f, d1, d2) = truth("polynomial")
    coefficients = params["coefficients"][:, 0, :].numpy()  # [T, 6], index = power
    degree = params["degree"].numpy()
    assert set(degree.tolist()) == {3, 4, 5}
    for t in range(TASKS):
        assert np.all(coefficients[t, degree[t] + 1:] == 0)
        assert 0.5 <= abs(coefficients[t, degree[t]]) <= 1.0
        poly = np.polynomial.Polynomial(coefficients[t])
        np.testing.assert_allclose(f[t], poly(x[t]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d1[t], poly.deriv(1)(x[t]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d2[t], poly.deriv(2)(x[t]), rtol=1e-12, atol=1e-12)


def test_sinusoids_match_closed_form() -> None:
    params, x, (f, d1, d2) = truth("sinusoids")
    a, w, phi = (params[k].numpy()[:, :, :] for k in ("amplitude", "frequency", "phase"))  # [T, 1, 3]
    xs = x[..., None]
    np.testing.assert_allclose(f, (a * np.sin(w * xs + phi)).sum(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d1, (a * w * np.cos(w * xs + phi)).sum(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d2, (-a * w**2 * np.sin(w * xs + phi)).sum(-1), rtol=1e-12, atol=1e-12)
    used = (a[:, 0, :] > 0).sum(1)
    assert set(used.tolist()) == {1, 2, 3} and np.all(used == params["components"].numpy())


def _primitive(name: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h, h', h'') of one composition primitive, by hand."""
    if name == "exp":
        return np.exp(u), np.exp(u), np.exp(u)
    if name == "tanh":
        t = np.tanh(u)
        return t, 1 - t**2, -2 * t * (1 - t**2)
    if name == "log1p":  # log1p(1 + u) = log(2 + u)
        return np.log(2 + u), 1 / (2 + u), -1 / (2 + u) ** 2
    assert name == "sin"
    return np.sin(u), np.cos(u), -np.sin(u)


def test_composition_matches_the_chain_rule() -> None:
    params, x, (f, d1, d2) = truth("composition")
    inner = params["inner"][:, 0, :].numpy()
    scale = p(params, "scale")[:, 0]
    pairs = set()
    for t in range(TASKS):
        poly = np.polynomial.Polynomial(inner[t])
        # p maps [-1, 1] monotonically onto [-1, 1].
        assert sorted(np.round(poly(np.array([-1.0, 1.0])), 12).tolist()) == [-1.0, 1.0]
        assert np.all(np.diff(poly(np.linspace(-1, 1, 201))) * np.sign(poly(1.0)) > 0)
        h1, h2 = PRIMITIVES[int(params["h1"][t])], PRIMITIVES[int(params["h2"][t])]
        pairs.add((h1, h2))
        lo, hi = _primitive(h1, np.array([-1.0, 1.0]))[0]
        middle, half = (hi + lo) / 2, (hi - lo) / 2
        q, q1, q2 = poly(x[t]), poly.deriv(1)(x[t]), poly.deriv(2)(x[t])
        g, g1, g2 = _primitive(h1, q)
        u = (g - middle) / half
        k, k1, k2 = _primitive(h2, u)
        du = g1 * q1 / half
        np.testing.assert_allclose(f[t], scale[t] * k, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d1[t], scale[t] * k1 * du, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(d2[t], scale[t] * (k2 * du**2 + k1 * (g2 * q1**2 + g1 * q2) / half),
                                   rtol=1e-10, atol=1e-10)
    assert {"exp", "log1p"} not in [set(pair) for pair in pairs]
    assert len(pairs) > 8  # the draw covers the pairs


def test_black_scholes_delta_and_gamma() -> None:
    params, x, (f, d1, d2) = truth("black-scholes")
    sigma, r, maturity, strike = (p(params, k) for k in ("volatility", "rate", "maturity", "strike"))
    spot = x * strike
    # The Black-Scholes (1973) call price in the original units, then its delta and gamma.
    d_plus = (np.log(spot / strike) + (r + sigma**2 / 2) * maturity) / (sigma * np.sqrt(maturity))
    d_minus = d_plus - sigma * np.sqrt(maturity)
    call = spot * norm.cdf(d_plus) - strike * np.exp(-r * maturity) * norm.cdf(d_minus)
    delta = norm.cdf(d_plus)
    gamma = norm.pdf(d_plus) / (spot * sigma * np.sqrt(maturity))
    np.testing.assert_allclose(f * strike, call, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d1, delta, rtol=1e-10, atol=1e-12)  # df/dx is the delta dC/dS
    np.testing.assert_allclose(d2, strike * gamma, rtol=1e-10, atol=1e-12)  # d2f/dx2 = K * gamma
    assert np.all((0.5 <= x) & (x <= 1.5)) and np.all((0.1 <= sigma) & (sigma <= 0.5))


def test_oscillator_solves_its_equation_of_motion() -> None:
    params, t, (x, v, a) = truth("oscillator")
    m, c, k, force, w, x0, v0 = (p(params, name) for name in ("m", "c", "k", "F", "w", "x0", "v0"))
    assert np.all(c**2 < 4 * m * k)  # underdamped
    residual = m * a + c * v + k * x - force * np.cos(w * t)
    assert np.abs(residual).max() < 1e-10
    # The closed-form velocity, derived by hand from x(t) = transient + steady state.
    detuning = k - m * w**2
    denominator = detuning**2 + (c * w) ** 2
    amp_cos, amp_sin = force * detuning / denominator, force * c * w / denominator
    gamma = c / (2 * m)
    damped = np.sqrt(k / m - gamma**2)
    c1 = x0 - amp_cos
    c2 = (v0 - amp_sin * w + gamma * c1) / damped
    velocity = (np.exp(-gamma * t) * ((-gamma * c1 + damped * c2) * np.cos(damped * t)
                                      + (-gamma * c2 - damped * c1) * np.sin(damped * t))
                - amp_cos * w * np.sin(w * t) + amp_sin * w * np.cos(w * t))
    np.testing.assert_allclose(v, velocity, rtol=1e-10, atol=1e-10)
    # The initial conditions hold.
    fam = FAMILY_CLASSES["oscillator"]
    at_zero = values_and_derivatives(fam, params, torch.zeros(TASKS, 1, 1, dtype=torch.float64), 1)
    np.testing.assert_allclose(at_zero[0].reshape(-1), x0[:, 0], atol=1e-12)
    np.testing.assert_allclose(at_zero[1].reshape(-1), v0[:, 0], atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_true_derivatives_vary_over_the_query_points(family: str) -> None:
    """The normalised metric divides by the variance of the true derivative: it is far above the floor,
    and a derivative is hardly ever nearly constant (variance a small fraction of its mean square)."""
    suite = DerivativesSuite(DerivativesConfig(family=family, order=2))
    batch = suite.sample(2000, torch.Generator().manual_seed(0), "test")
    variance = batch.query_y.double().var(dim=1, correction=0)
    assert float(variance.min()) > 100 * VARIANCE_FLOOR
    relative = variance / batch.query_y.double().pow(2).mean(dim=1)
    assert float(relative.quantile(0.01)) > 0.01
    assert torch.isfinite(batch.support_y).all() and float(batch.query_y.abs().max()) < 200


# --- episodes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 2])
def test_shapes_per_split(order: int) -> None:
    suite = DerivativesSuite(DerivativesConfig(shots=5, test_shots=7, query=6, test_query=30, order=order))
    generator = torch.Generator().manual_seed(0)
    train, val, test = (suite.sample(3, generator, split) for split in ("train", "val", "test"))
    assert train.support_x.shape == train.support_y.shape == val.support_x.shape == (3, 5, 1)
    assert train.query_x.shape == train.query_y.shape == val.query_x.shape == (3, 6, 1)
    assert val.query_y.shape == (3, 6, order)
    assert test.support_x.shape == test.support_y.shape == (3, 7, 1)
    assert test.query_x.shape == (3, 30, 1) and test.query_y.shape == (3, 30, order)
    for batch in (train, val, test):
        for tensor in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
            assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"


@pytest.mark.parametrize("family", FAMILIES)
def test_episodes_hold_the_family_function_and_its_derivatives(family: str) -> None:
    """Train queries are f, test queries f' and f'' of the task whose parameters are drawn first."""
    fam = FAMILY_CLASSES[family]
    suite = DerivativesSuite(DerivativesConfig(family=family, order=2, shots=8, query=9, test_query=11))
    params = fam.draw(4, torch.Generator().manual_seed(3))
    for split in ("train", "test"):
        batch = suite.sample(4, torch.Generator().manual_seed(3), split)
        low, high = fam.interval
        for x in (batch.support_x, batch.query_x):
            assert float(x.min()) >= low and float(x.max()) <= high
        values = values_and_derivatives(fam, params, batch.query_x.double(), 2)
        expected = values[0] if split == "train" else torch.cat(values[1:], dim=-1)
        torch.testing.assert_close(batch.query_y, expected.float(), rtol=1e-4, atol=1e-4)
        support = values_and_derivatives(fam, params, batch.support_x.double(), 0)[0]
        torch.testing.assert_close(batch.support_y, support.float(), rtol=1e-4, atol=1e-4)


def test_same_seed_same_episodes_different_seed_different() -> None:
    suite = DerivativesSuite(DerivativesConfig(family="composition", order=2, noise=0.1))
    torch.manual_seed(0)
    a = suite.sample(5, torch.Generator().manual_seed(11), "test")
    torch.manual_seed(99)  # the global RNG plays no part
    b = suite.sample(5, torch.Generator().manual_seed(11), "test")
    c = suite.sample(5, torch.Generator().manual_seed(12), "test")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))


def test_noise_is_on_the_support_values_only() -> None:
    clean = DerivativesSuite(DerivativesConfig(family="black-scholes", shots=50))
    noisy = DerivativesSuite(DerivativesConfig(family="black-scholes", shots=50, noise=0.5))
    for split in ("train", "test"):
        a = clean.sample(200, torch.Generator().manual_seed(4), split)
        b = noisy.sample(200, torch.Generator().manual_seed(4), split)
        for name in ("support_x", "query_x", "query_y"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        noise = (b.support_y - a.support_y).double()
        assert abs(float(noise.std()) - 0.5) < 0.01 and abs(float(noise.mean())) < 0.01


def test_scoring_options_do_not_change_the_episodes() -> None:
    """metric and activation are episode-neutral: cells differing only in them see identical episodes."""
    a = DerivativesSuite(DerivativesConfig(metric="normalized", activation="tanh"))
    b = DerivativesSuite(DerivativesConfig(metric="mse", activation="relu"))
    x, y = (s.sample(3, torch.Generator().manual_seed(0), "val") for s in (a, b))
    assert torch.equal(x.query_y, y.query_y) and torch.equal(x.support_y, y.support_y)
    assert _spec().episode_neutral == ("metric", "activation")


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*train, val, test"):
        DerivativesSuite(DerivativesConfig()).sample(2, torch.Generator().manual_seed(0), "valid")


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "message"), [
    ({"family": "gaussian"},
     "family must be one of polynomial, sinusoids, composition, black-scholes, oscillator, got 'gaussian'"),
    ({"shots": 0}, r"shots must be an integer from 1 to 100,000 \(K >= 1\), got 0"),
    ({"test_shots": 0}, r"test_shots must be an integer from 1 to 100,000 \(K >= 1\), got 0"),
    ({"order": 3}, r"order must be 1 \(f'\) or 2 \(f' and f''\), got 3"),
    ({"order": True}, r"order must be 1 \(f'\) or 2 \(f' and f''\), got True"),
    ({"noise": -0.1}, r"noise must be a finite standard deviation >= 0, got -0.1"),
    ({"noise": float("nan")}, r"noise must be a finite standard deviation >= 0, got nan"),
    ({"query": 0, "metric": "mse"}, r"query must be an integer from 1 to 100,000 \(at least one query point"),
    ({"query": 1}, r"query must be an integer from 2 to 100,000 \(the normalized metric needs a variance"),
    ({"test_query": 0}, r"test_query must be an integer from 2 to 100,000"),
    ({"metric": "mae"}, "metric must be one of normalized, mse, got 'mae'"),
    ({"activation": "gelu"}, "activation must be one of relu, tanh, softplus, got 'gelu'"),
    ({"activation": "relu", "order": 2}, "activation='relu' cannot be scored with order=2"),
])
def test_config_errors(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DerivativesConfig(**override)


def test_config_accepts_the_edges_and_resolves_from_a_grid() -> None:
    DerivativesConfig(shots=1, query=1, test_query=1, metric="mse", activation="relu", noise=0)
    config = resolve_params(DerivativesConfig, {"family": "oscillator", "order": 2}, "suite 'derivatives'")
    assert (config.order, config.shots, config.effective_test_shots) == (2, 10, 10)
    with pytest.raises(UsageError, match=r"suite 'derivatives': family must be one of .*got 'x'"):
        resolve_params(DerivativesConfig, {"family": "x"}, "suite 'derivatives'")


# --- scoring -------------------------------------------------------------------------------------


class Oracle(Algorithm):
    """A hand-written learner whose adapted function is a given task's true function (or zero)."""

    def __init__(self, suite: DerivativesSuite, params: dict[str, torch.Tensor], *, zero: bool = False,
                 direct: bool = False) -> None:
        super().__init__(None, nn.Linear(1, 1), suite, CPUBackend())
        self.params, self.zero, self.direct = params, zero, direct

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        return {}

    def meta_train_step(self, batch: Any) -> float:
        return 0.0

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Any]:
        return [None] * (steps + 1)

    def predict(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        if self.zero:
            return 0.0 * x
        return self.suite.family(self.params, x.double()[None])[0].to(x.dtype)

    def predict_derivatives(self, state: Any, x: torch.Tensor, order: int) -> list[torch.Tensor] | None:
        if not self.direct:
            return None
        values = values_and_derivatives(self.suite.family, self.params, x.double()[None], order)
        return [v[0].float() for v in values[1:]]


def _episode(config: DerivativesConfig, seed: int = 5
             ) -> tuple[DerivativesSuite, dict[str, torch.Tensor], Any]:
    """A suite, the parameters of its first test task with `seed`, and that one-task test episode."""
    suite = DerivativesSuite(config)
    params = suite.family.draw(1, torch.Generator().manual_seed(seed))
    return suite, params, suite.sample(1, torch.Generator().manual_seed(seed), "test")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("direct", [False, True])
def test_the_true_function_scores_zero(family: str, order: int, direct: bool) -> None:
    suite, params, batch = _episode(DerivativesConfig(family=family, order=order))
    oracle = Predictor(Oracle(suite, params, direct=direct), None)
    score = suite.score(oracle, batch.query_x[0], batch.query_y[0])
    assert score.shape == () and not score.requires_grad
    assert 0 <= float(score) < 1e-8


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
def test_zero_prediction_scores_mean_square_over_variance(family: str, order: int) -> None:
    suite, params, batch = _episode(DerivativesConfig(family=family, order=order))
    target = batch.query_y[0].double().numpy()  # [Q, order]
    zero = Predictor(Oracle(suite, params, zero=True), None)
    normalized = float(suite.score(zero, batch.query_x[0], batch.query_y[0]))
    assert normalized == pytest.approx(np.mean(np.mean(target**2, axis=0) / np.var(target, axis=0)), rel=1e-5)
    mse_suite = DerivativesSuite(DerivativesConfig(family=family, order=order, metric="mse"))
    mse = float(mse_suite.score(zero, batch.query_x[0], batch.query_y[0]))
    assert mse == pytest.approx(np.mean(target**2), rel=1e-5)


def test_an_adapted_network_is_scored_on_its_input_derivatives() -> None:
    """Autograd on the suite's tanh MLP agrees with central finite differences of it in float64."""

    class Network(Oracle):
        def predict(self, state: Any, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    suite, params, batch = _episode(DerivativesConfig(family="sinusoids", order=2, metric="mse"))
    torch.manual_seed(0)
    algorithm = Network(suite, params)
    algorithm.model = suite.build_model().double()
    qx, qy = batch.query_x[0].double(), batch.query_y[0].double()
    h = 1e-4
    with torch.no_grad():
        f0, fp, fm = (algorithm.model(qx + s) for s in (0.0, h, -h))
    finite = torch.cat([(fp - fm) / (2 * h), (fp - 2 * f0 + fm) / h**2], dim=-1)
    expected = float(((finite - qy) ** 2).mean())
    assert float(suite.score(Predictor(algorithm, None), qx, qy)) == pytest.approx(expected, rel=1e-5)


def test_metric_averages_orders_and_tasks_and_checks_shapes() -> None:
    suite = DerivativesSuite(DerivativesConfig(order=2))
    target = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])  # variances 8/3 and 2
    prediction = target + torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 3.0]])  # MSEs 1 and 3
    expected = (1 / (8 / 3) + 3 / 2) / 2
    assert float(suite.metric(prediction, target)) == pytest.approx(expected)
    tasks = prediction[None].repeat(4, 1, 1), target[None].repeat(4, 1, 1)
    assert float(suite.metric(*tasks)) == pytest.approx(expected)
    constant = torch.ones(3, 2, dtype=torch.float64)  # no variance: the floor, not a division by zero
    assert float(suite.metric(constant + 1e-3, constant)) == pytest.approx(1e-6 / VARIANCE_FLOOR)
    with pytest.raises(ValueError, match=r"predictions shaped \(3, 1\) do not match the targets \(3, 2\)"):
        suite.metric(prediction[:, :1], target)
    assert float(suite.loss(torch.tensor([1.0, 3.0]), torch.zeros(2))) == pytest.approx(5.0)


@pytest.mark.parametrize(("config", "name", "label"), [
    (DerivativesConfig(), "normalized_derivative_mse", "f' normalised MSE"),
    (DerivativesConfig(order=2), "normalized_derivative_mse", "f',f'' normalised MSE"),
    (DerivativesConfig(metric="mse"), "derivative_mse", "f' MSE"),
    (DerivativesConfig(metric="mse", order=2), "derivative_mse", "f',f'' MSE"),
])
def test_metric_name_and_label_follow_the_config(config: DerivativesConfig, name: str, label: str) -> None:
    suite = DerivativesSuite(config)
    assert (suite.metric_name, suite.metric_label, suite.higher_is_better) == (name, label, False)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "relu"])
def test_model_is_the_papers_mlp_with_the_chosen_activation(activation: str) -> None:
    model = DerivativesSuite(DerivativesConfig(activation=activation)).build_model()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 40), (40, 40), (40, 1)]
    kind = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}[activation]
    assert sum(isinstance(m, kind) for m in model) == 2 and model(torch.zeros(6, 1)).shape == (6, 1)


def test_describe_names_the_family_its_ranges_and_a_leaderboard_note() -> None:
    info = DerivativesSuite(DerivativesConfig(family="black-scholes", order=2, test_shots=5)).describe()
    assert info["family"] == "black-scholes" and info["interval"] == [0.5, 1.5]
    assert info["parameter_ranges"]["volatility"] == [0.1, 0.5] and info["targets"] == ["f'", "f''"]
    assert info["test_shots"] == 5 and "f', f''" in info["leaderboard_note"]


# --- registration and a real cell ---------------------------------------------------------------


def _spec() -> TaskSuiteSpec:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(derivatives)
    (spec,) = [spec for result in manager.hook.harness_register_task_suites() for spec in result]
    return spec


def test_registers_through_pluggy() -> None:
    spec = _spec()
    assert spec.name == "derivatives" and spec.task_kind == "regression" and spec.config is DerivativesConfig
    assert spec.paper and spec.description
    assert isinstance(spec.factory(DerivativesConfig(shots=2)), DerivativesSuite)


@pytest.mark.parametrize(("algorithm", "config", "name", "label"), [
    ("maml", (("family", "black-scholes"), ("order", 2)), "normalized_derivative_mse",
     "f',f'' normalised MSE"),
    ("pretrain", (("family", "oscillator"), ("metric", "mse")), "derivative_mse", "f' MSE"),
])
def test_a_real_cell_runs_and_records_the_metric(algorithm: str, config: tuple, name: str, label: str
                                                 ) -> None:
    budget = Budget(iterations=4, val_interval=2, val_episodes=2, test_episodes=3, threads=1)
    hparams = (("meta_batch_size", 2), ("test_steps", 2))
    cell = Cell(algorithm, hparams, "derivatives", config, "cpu", 0, budget)
    record = run_one(cell, build_plugin_manager(entry_points=False), in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    metric = record["metric"]
    assert (metric["name"], metric["label"], metric["higher_is_better"]) == (name, label, False)
    assert metric["n"] == 3 and len(metric["per_step"]) == 3
    assert all(math.isfinite(step["mean"]) and step["mean"] > 0 for step in metric["per_step"])
    assert record["suite_info"]["family"] == dict(config)["family"]
    assert "leaderboard_note" in record["suite_info"]
