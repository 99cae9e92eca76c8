"""The linear-regression suite: its configuration's checks, episodes that are noisy samples of one linear
function per task (checked by independent numpy least squares), the prior's scales, the input distributions
(Kolmogorov-Smirnov against scipy's), the base learners and the metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from harness.registry import build_plugin_manager
from metaharness_plugins.suites._linear_regression import LinearRegressionSuite
from metaharness_plugins.suites.linear_regression import LinearRegressionConfig
from metaharness_plugins.suites.linear_regression import LinearRegressionSuite as ForwardedSuite


def sample(split: str = "train", n: int = 4, seed: int = 0, **config) -> tuple[LinearRegressionSuite, object]:
    suite = LinearRegressionSuite(LinearRegressionConfig(**config))
    return suite, suite.sample(n, torch.Generator().manual_seed(seed), split)


def true_coefficients(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Least squares [w; b] of one task's points by numpy (an independent solver)."""
    a = np.hstack([x.double().numpy(), np.ones((x.shape[0], 1))])
    return np.linalg.lstsq(a, y.double().numpy(), rcond=None)[0]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("dim", 0, "dim must be an integer from 1"), ("dim", True, "dim must be an integer"),
    ("shots", 0, "shots must be an integer from 1"),
    ("test_shots", 0, "test_shots must be an integer from 1"),
    ("query", 0, "query must be"), ("noise", -0.1, "noise must be a finite number >= 0"),
    ("noise", float("nan"), "noise must be a finite number"), ("weight_scale", -1.0, "weight_scale must be"),
    ("bias_scale", "1", "bias_scale must be"),
    ("input_scale", 0.0, "input_scale must be a finite number > 0"),
    ("inputs", "cauchy", "inputs must be one of uniform, normal"),
    ("model", "cnn", "model must be one of mlp, linear"),
    ("hidden", (), "hidden is empty"), ("hidden", (40, 0), "hidden must list layer sizes from 1"),
    ("hidden", 40, "hidden must be a list"),
])
def test_bad_configurations_say_what_is_valid(field, value, message):
    with pytest.raises(ValueError, match=message):
        LinearRegressionConfig(**{field: value})


def test_the_light_module_forwards_to_the_implementation():
    assert ForwardedSuite is LinearRegressionSuite


def test_the_suite_is_registered_as_regression_with_model_choices_episode_neutral():
    spec = build_plugin_manager(entry_points=False).suites["linear-regression"].spec
    assert spec.task_kind == "regression" and spec.factory.resolve() is LinearRegressionSuite
    assert set(spec.episode_neutral) == {"model", "hidden"}
    _, mlp = sample(model="mlp", dim=3)
    _, linear = sample(model="linear", dim=3, hidden=(7,))
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(mlp, name), getattr(linear, name))


def test_episode_shapes_and_sizes_per_split():
    _, train = sample("train", n=3, dim=4, shots=6, query=7, test_shots=2, test_query=9)
    assert train.support_x.shape == (3, 6, 4) and train.support_y.shape == (3, 6, 1)
    assert train.query_x.shape == (3, 7, 4) and train.query_y.shape == (3, 7, 1)
    _, test = sample("test", n=3, dim=4, shots=6, query=7, test_shots=2, test_query=9)
    assert test.support_x.shape == (3, 2, 4) and test.query_x.shape == (3, 9, 4)
    assert train.support_x.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown split"):
        sample("dev")
    with pytest.raises(ValueError, match="n_tasks must be a positive integer"):
        sample(n=0)


def test_episodes_are_a_pure_function_of_the_generator():
    _, a = sample(seed=3, dim=2)
    _, b = sample(seed=3, dim=2)
    _, c = sample(seed=4, dim=2)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)


def test_without_noise_support_and_query_come_from_one_linear_function():
    _, batch = sample(n=5, dim=3, shots=8, noise=0.0)
    for i in range(5):
        coef = true_coefficients(batch.support_x[i], batch.support_y[i])
        a = np.hstack([batch.query_x[i].double().numpy(), np.ones((batch.query_x.shape[1], 1))])
        np.testing.assert_allclose(a @ coef, batch.query_y[i].double().numpy(), atol=1e-5)


def test_noise_is_on_the_support_targets_only_with_the_configured_scale():
    noise = 0.3
    _, batch = sample(n=2, dim=2, shots=4000, test_query=50, noise=noise)
    for i in range(2):
        coef = true_coefficients(batch.support_x[i], batch.support_y[i])
        a = np.hstack([batch.support_x[i].double().numpy(), np.ones((4000, 1))])
        residual = batch.support_y[i].double().numpy() - a @ coef
        assert residual.std() == pytest.approx(noise, rel=0.05)
        q = np.hstack([batch.query_x[i].double().numpy(), np.ones((batch.query_x.shape[1], 1))])
        # The query targets are noise-free: the fit (off by O(noise / sqrt(K))) explains them to ~0.02.
        assert np.abs(q @ coef - batch.query_y[i].double().numpy()).max() < 0.05


def test_weights_and_bias_follow_the_prior_scales():
    _, batch = sample(n=3000, dim=2, shots=3, noise=0.0, weight_scale=2.0, bias_scale=0.5)
    coefs = np.stack([true_coefficients(batch.support_x[i], batch.support_y[i])[:, 0] for i in range(3000)])
    # The sample standard deviation of 3000 normals is within 3% of the truth (its standard error is 1.3%).
    np.testing.assert_allclose(coefs.std(axis=0), [2.0, 2.0, 0.5], rtol=0.04)
    assert np.abs(coefs.mean(axis=0)).max() < 0.1


@pytest.mark.parametrize("inputs", ["uniform", "normal"])
def test_inputs_follow_the_configured_distribution(inputs):
    _, batch = sample(n=50, dim=4, shots=40, inputs=inputs, input_scale=2.0)
    x = batch.support_x.reshape(-1).double().numpy()
    reference = stats.uniform(loc=-2.0, scale=4.0) if inputs == "uniform" else stats.norm(scale=2.0)
    assert stats.kstest(x, reference.cdf).pvalue > 1e-3
    if inputs == "uniform":
        assert x.min() >= -2.0 and x.max() <= 2.0


def test_models_mlp_with_hidden_sizes_and_linear():
    suite = LinearRegressionSuite(LinearRegressionConfig(dim=3, hidden=(8, 5)))
    shapes = [tuple(p.shape) for p in suite.build_model().parameters()]
    assert shapes == [(8, 3), (8,), (5, 8), (5,), (1, 5), (1,)]
    linear = LinearRegressionSuite(LinearRegressionConfig(dim=3, model="linear")).build_model()
    assert [tuple(p.shape) for p in linear.parameters()] == [(1, 3), (1,)]
    assert isinstance(linear, torch.nn.Sequential) and len(linear) == 1


def test_metric_is_the_mean_squared_error_and_describe_names_the_bayes_penalty():
    suite = LinearRegressionSuite(LinearRegressionConfig(noise=0.2, weight_scale=2.0, bias_scale=2.0))
    prediction, target = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [4.0]])
    assert float(suite.metric(prediction, target)) == pytest.approx((1 + 4) / 2)
    assert float(suite.loss(prediction, target)) == pytest.approx(2.5)
    info = suite.describe()
    assert info["bayes_ridge_lambda"] == pytest.approx(0.2**2 / 2.0**2)
    assert info["dim"] == 1 and info["hidden"] == [40, 40]
    unequal = LinearRegressionSuite(LinearRegressionConfig(bias_scale=0.0))
    assert "bayes_ridge_lambda" not in unequal.describe()
