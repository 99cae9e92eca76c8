"""ALPaCA: the closed-form posterior predictive against Gaussian conditioning of the joint (scipy), the loss's
gradient against finite differences, order invariance and the adapt contract, derivatives in x, vector inputs
and outputs, registration and bad input, and learning a family of random quadratics close to the exact Bayes
predictive."""

from __future__ import annotations

import math

import numpy as np
import pluggy
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import harness.hookspecs
from harness import TaskBatch, TaskSuite
from harness.base import Predictor
from harness.specs import resolve_params
from metaharness_plugins.algorithms import alpaca as alpaca_module
from metaharness_plugins.algorithms.alpaca import ALPaCA, ALPaCAHparams, check
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.derivatives import DerivativesConfig
from metaharness_plugins.suites.linear_regression import LinearRegressionConfig, LinearRegressionSuite
from tests.plugins.helpers import assert_meta_gradient_matches_central_differences

TINY = {"hidden": 5, "layers": 1, "features": 3}


class QuadraticSuite(TaskSuite):
    """y = c0 + c1 x + c2 x^2 + noise with c ~ N(0, I), x U[-1, 1], float64: Bayesian linear regression in
    the basis (1, x, x^2), whose exact predictive the tests compare against."""

    NOISE = 0.1

    def __init__(self, shots: int = 4, query: int = 12) -> None:
        super().__init__(None)
        self.shots, self.query = shots, query

    @staticmethod
    def basis(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x), x, x * x], dim=-1)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        n = self.shots + self.query
        x = 2 * torch.rand(n_tasks, n, 1, generator=generator, dtype=torch.float64) - 1
        c = torch.randn(n_tasks, 3, 1, generator=generator, dtype=torch.float64)
        noise = torch.randn(n_tasks, n, 1, generator=generator, dtype=torch.float64)
        y = self.basis(x) @ c + self.NOISE * noise
        return TaskBatch(x[:, : self.shots], y[:, : self.shots], x[:, self.shots:], y[:, self.shots:])

    def exact_nll(self, batch: TaskBatch) -> float:
        """The mean query NLL under the true prior: y ~ N(0, B B^T + noise^2 I) jointly, conditioned."""
        values = []
        for t in range(batch.support_x.shape[0]):
            b = self.basis(torch.cat([batch.support_x[t], batch.query_x[t]])).numpy()
            cov = b @ b.T + self.NOISE**2 * np.eye(len(b))
            k = self.shots
            gain = np.linalg.solve(cov[:k, :k], cov[:k, k:]).T
            mean = gain @ batch.support_y[t].numpy()[:, 0]
            var = np.diag(cov[k:, k:] - gain @ cov[:k, k:])
            values.append(-stats.norm.logpdf(batch.query_y[t].numpy()[:, 0], mean, np.sqrt(var)).mean())
        return float(np.mean(values))

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1).double()

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, target)

    metric = loss


def _algo(suite: TaskSuite | None = None, seed: int = 0, **hparams: object) -> ALPaCA:
    suite = suite or QuadraticSuite()
    torch.manual_seed(seed)
    return ALPaCA(ALPaCAHparams(**hparams), suite.build_model(), suite, CPUBackend())


def _batch(suite: TaskSuite, n: int = 3, seed: int = 0) -> TaskBatch:
    return suite.sample(n, torch.Generator().manual_seed(seed), "train")


def _randomise_prior(algo: ALPaCA, seed: int = 1) -> None:
    """A prior far from its initial identity/zero values, so every term of the formulas matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (algo.net.prior_mean, algo.net.prior_tril, algo.net.prior_log_diag, algo.net.log_noise):
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_the_posterior_predictive_is_the_conditional_of_the_joint_gaussian() -> None:
    """With features Phi, K ~ MN(K0, Lambda0^-1, Sigma) makes the context and target outputs jointly Gaussian:
    mean Phi K0, covariance (Phi Lambda0^-1 Phi^T + I) sigma^2 per output. Conditioning that joint (scipy-free
    numpy algebra in the covariance form) must give ALPaCA's precision-form mean and variance, and scipy's
    log density of the targets its NLL."""
    suite = QuadraticSuite(shots=3, query=5)
    algo = _algo(suite, hidden=6, layers=2, features=4)
    _randomise_prior(algo)
    batch = _batch(suite, 1)
    sx, sy, qx, qy = batch.support_x[0], batch.support_y[0], batch.query_x[0], batch.query_y[0]
    with torch.no_grad():
        state = algo.adapt(sx, sy, 0)[0]
        mean, std = algo.predict_distribution(state, qx)
        phi_s, phi_q = algo.net.features(sx).numpy(), algo.net.features(qx).numpy()
        k0 = algo.net.prior_mean.numpy()
        prior_cov = np.linalg.inv(algo.net.prior_precision().numpy())
        sigma2 = float(torch.exp(2 * algo.net.log_noise)[0])
        loss = float(algo.nll(sx, sy, qx, qy))
    joint_s = phi_s @ prior_cov @ phi_s.T + np.eye(len(phi_s))
    cross = phi_q @ prior_cov @ phi_s.T
    gain = cross @ np.linalg.inv(joint_s)
    expected_mean = phi_q @ k0 + gain @ (sy.numpy() - phi_s @ k0)
    expected_var = sigma2 * np.diag(phi_q @ prior_cov @ phi_q.T + np.eye(len(phi_q)) - gain @ cross.T)
    np.testing.assert_allclose(mean.numpy(), expected_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std.numpy()[:, 0] ** 2, expected_var, rtol=1e-9)
    expected_nll = -stats.norm.logpdf(qy.numpy()[:, 0], expected_mean[:, 0], np.sqrt(expected_var)).mean()
    assert loss == pytest.approx(expected_nll, rel=1e-9)
    # The predictive mean is what `predict` returns, and the prior is positive definite.
    assert torch.allclose(algo.predict(state, qx), mean)
    assert np.all(np.linalg.eigvalsh(np.linalg.inv(prior_cov)) > 0)


def test_a_posterior_that_float32_cannot_factorise_is_factorised_in_float64() -> None:
    """Collinear features of size 1e3 over a prior precision of 1e-7: Lambda_n is positive definite but
    float32 rounds it to an indefinite matrix. The posterior is still computed, as in float64."""
    from metaharness_plugins.algorithms._alpaca import ALPaCANet

    net = ALPaCANet(1, 1, hidden=4, layers=1, features=3, activation="tanh").float()
    with torch.no_grad():
        net.prior_log_diag.fill_(-8.0)
    net.features = nn.Sequential(nn.Linear(1, 3))
    with torch.no_grad():
        net.features[0].weight.copy_(torch.tensor([[1e3], [1e3 + 1e-2], [1e3 - 1e-2]]))
        net.features[0].bias.zero_()
    x = torch.linspace(-1, 1, 5).unsqueeze(-1)
    y = torch.randn(5, 1, generator=torch.Generator().manual_seed(0))
    phi = net.features(x)
    _, info = torch.linalg.cholesky_ex(phi.mT @ phi + net.prior_precision())
    assert int(info) != 0  # the case this test is about: float32 fails
    mean, cholesky = net.posterior(x, y)
    net64 = net.double()
    mean64, cholesky64 = net64.posterior(x.double(), y.double())
    assert mean.dtype == cholesky.dtype == torch.float32 and torch.isfinite(mean).all()
    assert torch.allclose(cholesky.double(), cholesky64, rtol=1e-4, atol=1e-3)


def test_loss_gradient_matches_central_finite_differences() -> None:
    """Every entry of d loss / d meta-parameters (features, K0, Lambda0's factor, the noise), float64."""
    algo = _algo(activation="tanh", **TINY)
    _randomise_prior(algo)
    batch = _batch(algo.suite, 2)
    checked = assert_meta_gradient_matches_central_differences(algo, batch)
    # Only the strictly lower triangle of prior_tril is used: its other entries have zero gradient.
    assert torch.all(torch.triu(algo.meta_gradient(batch)[1]["prior_tril"]) == 0)
    assert checked == algo.num_parameters() > 30


def test_the_meta_loss_is_the_mean_over_tasks_of_each_tasks_loss() -> None:
    algo = _algo(**TINY)
    _randomise_prior(algo)
    batch = _batch(algo.suite, 4)
    with torch.no_grad():
        each = [algo.task_loss(batch.support_x[t], batch.support_y[t], batch.query_x[t], batch.query_y[t])
                for t in range(4)]
        assert float(algo.meta_loss(batch)) == pytest.approx(float(torch.stack(each).mean()), rel=1e-12)


def test_adapting_ignores_the_order_of_the_support_set_and_reads_its_values() -> None:
    algo = _algo()
    _randomise_prior(algo)
    batch = _batch(algo.suite, 1)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        states = algo.adapt(sx, sy, 3)
        shuffled = algo.adapt(sx[order], sy[order], 0)[0]
        moved = algo.adapt(sx, sy + 0.5, 0)[0]
        assert len(states) == 4 and all(s is states[0] for s in states)  # exact: nothing changes with steps
        for a, b in zip(algo.predict_distribution(states[0], qx), algo.predict_distribution(shuffled, qx)):
            assert torch.allclose(a, b, rtol=1e-10)
        assert not torch.allclose(algo.predict(states[0], qx), algo.predict(moved, qx))


def test_derivatives_in_x_match_finite_differences_of_the_posterior_mean() -> None:
    """What the derivatives suite scores: Predictor.derivatives of the adapted learner (f' and f'')."""
    algo = _algo(hidden=8, layers=2, features=5)
    _randomise_prior(algo)
    batch = _batch(algo.suite, 1)
    state = algo.adapt(batch.support_x[0], batch.support_y[0], 0)[0]
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    first, second = Predictor(algo, state).derivatives(x, 2)
    h = 1e-4
    with torch.no_grad():
        up, mid, down = (algo.predict(state, x + d) for d in (h, 0.0, -h))
    torch.testing.assert_close(first, (up - down) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(second, (up - 2 * mid + down) / h**2, rtol=1e-4, atol=1e-5)
    assert float(second.abs().max()) > 1e-3  # tanh features: a curved posterior mean


class TwoOutputs(LinearRegressionSuite):
    """The linear-regression suite with every target given twice: y in R^2, both outputs equal."""

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        b = super().sample(n_tasks, generator, split)
        return TaskBatch(b.support_x, b.support_y.repeat(1, 1, 2), b.query_x, b.query_y.repeat(1, 1, 2))


def test_vector_inputs_and_outputs() -> None:
    """x in R^3 (the linear-regression suite), and a y in R^2 whose outputs share Lambda_n but not the
    noise."""
    config = LinearRegressionConfig(dim=3, shots=6)
    algo, wide = _algo(LinearRegressionSuite(config), **TINY), _algo(TwoOutputs(config), **TINY)
    assert (algo.x_dim, algo.y_dim, wide.x_dim, wide.y_dim) == (3, 1, 3, 2)
    batch = _batch(wide.suite, 2)
    with torch.no_grad():
        wide.net.log_noise.copy_(torch.tensor([0.0, math.log(2.0)]))
        state = wide.adapt(batch.support_x[0], batch.support_y[0], 0)[0]
        mean, std = wide.predict_distribution(state, batch.query_x[0])
        one = algo.predict(algo.adapt(batch.support_x[0], batch.support_y[0, :, :1], 0)[0], batch.query_x[0])
    assert one.shape == (batch.query_x.shape[1], 1)
    assert mean.shape == std.shape == (batch.query_x.shape[1], 2)
    torch.testing.assert_close(mean[:, 0], mean[:, 1])  # the same targets, the same prior mean (zero)
    torch.testing.assert_close(std[:, 1], 2 * std[:, 0])  # the noise scales the whole predictive


def test_registration_hparams_and_checks() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(alpaca_module)
    (spec,) = [s for specs in manager.hook.harness_register_algorithms() for s in specs]
    assert (spec.name, spec.hparams, spec.task_kinds) == ("alpaca", ALPaCAHparams, frozenset({"regression"}))
    assert "Harrison" in spec.paper and spec.factory.resolve() is ALPaCA
    assert resolve_params(ALPaCAHparams, {"features": 16}, "alpaca").features == 16
    for bad, message in (({"features": 0}, "features"), ({"meta_lr": 0.0}, "meta_lr"),
                         ({"activation": "gelu"}, "activation must be one of relu, tanh, softplus")):
        with pytest.raises(ValueError, match=message):
            ALPaCAHparams(**bad)
    assert check(ALPaCAHparams(), "derivatives", DerivativesConfig(order=2)) == ""
    message = check(ALPaCAHparams(activation="relu"), "derivatives", DerivativesConfig(order=2))
    assert "second derivatives (order 2)" in message and "set alpaca's activation to 'tanh'" in message
    assert check(ALPaCAHparams(activation="relu"), "derivatives", DerivativesConfig(order=1)) == ""


def test_non_regression_episodes_are_refused() -> None:
    class Flat(QuadraticSuite):
        def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
            b = super().sample(n_tasks, generator, split)
            return TaskBatch(b.support_x[..., 0], b.support_y, b.query_x[..., 0], b.query_y)

    with pytest.raises(TypeError, match=r"alpaca needs regression episodes shaped \[tasks, points, "):
        _algo(Flat())


def test_it_learns_random_quadratics_close_to_the_exact_bayes_predictive() -> None:
    """600 Adam steps on 4-shot quadratics: the query NLL on held-out tasks falls from the initial prior's by
    over a nat and ends within 0.15 nats of the exact Bayes predictive's (the floor no learner beats)."""
    suite = QuadraticSuite()
    algo = _algo(suite, hidden=32, layers=2, features=8, meta_lr=0.01, meta_batch_size=16)
    test = suite.sample(200, torch.Generator().manual_seed(99), "test")
    with torch.no_grad():
        before = float(algo.meta_loss(test))
    generator = torch.Generator().manual_seed(0)
    for _ in range(600):
        algo.meta_train_step(suite.sample(16, generator, "train"))
    with torch.no_grad():
        after = float(algo.meta_loss(test))
    exact = suite.exact_nll(test)
    assert after < before - 1.0, (before, after, exact)
    assert exact < after < exact + 0.15, (before, after, exact)
