"""The sensitivity measurements: input-Jacobian norms and the layer-norm bound against closed forms, numpy
SVDs and finite differences; the conv operator norm against the dense operator's SVD; noisy-input scores
against their closed-form expectation; the options, and registration."""

from __future__ import annotations

import math

import numpy as np
import pluggy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import harness.hookspecs
from harness.base import Predictor, TaskSuite
from harness.functional import GradientAlgorithm, snapshot
from harness.specs import TaskBatch, resolve_params
from metaharness_plugins.analysis import sensitivity as sensitivity_module
from metaharness_plugins.analysis._sensitivity import (
    Lipschitz,
    NoiseRobustness,
    conv_operator_norm,
    input_jacobian_norms,
    spectral_bound,
)
from metaharness_plugins.analysis.sensitivity import LipschitzOptions, NoiseOptions
from metaharness_plugins.backends.cpu import CPUBackend


class Regression(TaskSuite):
    """y = model(x) on 3-dimensional inputs, scored by MSE; `model` is what the test gives."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(None)
        self.model = model

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        x = torch.randn(n_tasks, 8, 3, generator=generator, dtype=torch.float64)
        return TaskBatch(x, x.sum(-1, keepdim=True), x, x.sum(-1, keepdim=True))

    def build_model(self) -> nn.Module:
        return self.model

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, target)

    metric = loss


class Fixed(GradientAlgorithm):
    """The model as it is, for every task: the adapted state is the meta-parameters."""

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list:
        return [snapshot(self.params)] * (steps + 1)


def _predictor(model: nn.Module) -> Predictor:
    suite = Regression(model.double())
    algo = Fixed(None, suite.build_model(), suite, CPUBackend())
    return Predictor(algo, algo.adapt(None, None, 0)[0])


def _points(n: int = 50, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _lipschitz(predictor: Predictor, x: torch.Tensor, **options: object) -> dict[str, float]:
    measurement = Lipschitz(LipschitzOptions(**options), predictor.algorithm.suite)
    return measurement.measure(predictor, x, None, torch.Generator().manual_seed(0))


def test_on_a_linear_model_gradient_norms_and_the_bound_equal_the_weight_norm() -> None:
    torch.manual_seed(0)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 1)))
    w = predictor.state["0.weight"].flatten().tolist()
    norm = math.sqrt(sum(v * v for v in w))
    values = _lipschitz(predictor, _points())
    assert values["lipschitz_grad_mean"] == pytest.approx(norm, rel=1e-12)
    assert values["lipschitz_grad_max"] == pytest.approx(norm, rel=1e-12)
    assert values["lipschitz_spectral_bound"] == pytest.approx(norm, rel=1e-12)


def test_vector_outputs_use_the_jacobians_spectral_norm() -> None:
    torch.manual_seed(1)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 4)))
    top = np.linalg.svd(predictor.state["0.weight"].numpy(), compute_uv=False)[0]
    norms = input_jacobian_norms(predictor, _points(10))
    assert torch.allclose(norms, torch.full((10,), float(top), dtype=torch.float64), rtol=1e-12)
    assert _lipschitz(predictor, _points())["lipschitz_spectral_bound"] == pytest.approx(top, rel=1e-12)


def test_gradient_norms_match_finite_differences_on_an_mlp() -> None:
    torch.manual_seed(2)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)))
    x = _points(5)
    norms = input_jacobian_norms(predictor, x)
    h = 1e-6
    for i in range(5):
        grad = [(float(predictor(x[i:i + 1] + h * e)) - float(predictor(x[i:i + 1] - h * e))) / (2 * h)
                for e in torch.eye(3, dtype=torch.float64)]
        assert float(norms[i]) == pytest.approx(math.sqrt(sum(g * g for g in grad)), rel=1e-7)


@pytest.mark.parametrize(("activation", "factor"), [(nn.ReLU(), 1.0), (nn.Tanh(), 1.0), (nn.Sigmoid(), 0.25)])
def test_on_a_two_layer_mlp_the_bound_is_the_norm_product_and_holds(activation: nn.Module,
                                                                     factor: float) -> None:
    torch.manual_seed(3)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 32), activation, nn.Linear(32, 2)))
    w1, w2 = (predictor.state[f"{i}.weight"].numpy() for i in (0, 2))
    product = np.linalg.norm(w1, 2) * np.linalg.norm(w2, 2) * factor
    values = _lipschitz(predictor, _points(400, seed=4))
    assert values["lipschitz_spectral_bound"] == pytest.approx(product, rel=1e-12)
    assert values["lipschitz_grad_mean"] <= values["lipschitz_grad_max"] <= values["lipschitz_spectral_bound"]


def test_conv_operator_norm_matches_the_dense_operators_largest_singular_value() -> None:
    torch.manual_seed(5)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2).double()
    shape = (1, 2, 5, 5)
    basis = torch.eye(50, dtype=torch.float64).view(50, *shape[1:])
    dense = conv._conv_forward(basis, conv.weight.detach(), None).reshape(50, -1).T  # columns: images of e_j
    exact = np.linalg.svd(dense.numpy(), compute_uv=False)[0]
    estimate = conv_operator_norm(conv, conv.weight, shape, 2000, torch.Generator().manual_seed(0))
    assert estimate == pytest.approx(exact, rel=1e-6)
    assert estimate <= exact * (1 + 1e-9)  # power iteration approaches from below


def test_a_conv_net_without_batch_norm_gets_a_bound_above_its_gradient_norms() -> None:
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 2 * 2, 3))
    predictor = _predictor(model)
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    values = _lipschitz(predictor, x)
    assert 0 < values["lipschitz_grad_max"] <= values["lipschitz_spectral_bound"]


def test_no_bound_where_it_does_not_apply_and_no_gradients_without_a_graph() -> None:
    torch.manual_seed(8)
    batch_norm = _predictor(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False),
                                          nn.Linear(4, 1)))
    values = _lipschitz(batch_norm, _points())
    assert set(values) == {"lipschitz_grad_mean", "lipschitz_grad_max"}  # batch statistics: no fixed map
    assert set(_lipschitz(batch_norm, _points(), bound=False)) == set(values)
    linear = _predictor(nn.Sequential(nn.Linear(3, 1)))
    other = Predictor(linear.algorithm, {"prototypes": torch.zeros(2, 3)})  # not the model's parameters
    assert spectral_bound(other, _points(), 10, torch.Generator()) is None

    class Detached(Fixed):
        def predict(self, state: dict, x: torch.Tensor) -> torch.Tensor:
            return super().predict(state, x).detach()

    class Doubled(Fixed):
        def predict(self, state: dict, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().predict(state, x)

    suite = Regression(nn.Sequential(nn.Linear(3, 1)).double())
    algo = Detached(None, suite.build_model(), suite, CPUBackend())
    detached = Predictor(algo, algo.adapt(None, None, 0)[0])
    assert input_jacobian_norms(detached, _points()) is None
    assert set(_lipschitz(detached, _points())) == {"lipschitz_spectral_bound"}  # still the plain map
    algo = Doubled(None, suite.build_model(), suite, CPUBackend())
    doubled = Predictor(algo, algo.adapt(None, None, 0)[0])
    values = _lipschitz(doubled, _points())
    assert set(values) == {"lipschitz_grad_mean", "lipschitz_grad_max"}  # predict is not the plain model
    twice = 2 * float(doubled.state["0.weight"].norm())
    assert values["lipschitz_grad_max"] == pytest.approx(twice, rel=1e-12)
    assert Lipschitz(LipschitzOptions(bound=False), suite).columns().keys() == {"lipschitz_grad_mean",
                                                                               "lipschitz_grad_max"}


def test_an_adaptation_that_blew_up_gives_nan_not_an_error() -> None:
    """Where test-time adaptation diverged (Reptile's SGD on one sinusoid episode did), the episode's
    values are NaN, which the cell's summary leaves out, and the cell goes on."""
    torch.manual_seed(3)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    predictor.state["2.weight"][0, 1] = math.inf
    values = _lipschitz(predictor, _points())
    assert set(values) == {"lipschitz_grad_mean", "lipschitz_grad_max", "lipschitz_spectral_bound"}
    assert all(math.isnan(v) for v in values.values())
    predictor.state["2.weight"][0, 1] = 0.5
    assert all(math.isfinite(v) for v in _lipschitz(predictor, _points()).values())


def test_noise_zero_reproduces_the_metric_and_noise_raises_mse_by_sigma_squared_norm_squared() -> None:
    torch.manual_seed(9)
    predictor = _predictor(nn.Sequential(nn.Linear(3, 1)))
    suite = predictor.algorithm.suite
    x = _points(40)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    measurement = NoiseRobustness(NoiseOptions(sigmas=(0, 0.3), samples=4000), suite)
    assert set(measurement.columns()) == {"noise_0_metric", "noise_0.3_metric"}
    assert measurement.columns()["noise_0.3_metric"] == ("mse at noise σ=0.3", False)
    values = measurement.measure(predictor, x, y, torch.Generator().manual_seed(0))
    clean = float(suite.score(predictor, x, y))
    assert values["noise_0_metric"] == clean
    # E[(w.(x + s e) + b - y)^2] = (w.x + b - y)^2 + s^2 ||w||^2 for e ~ N(0, I).
    w = predictor.state["0.weight"]
    expected = clean + 0.09 * float((w * w).sum())
    assert values["noise_0.3_metric"] == pytest.approx(expected, rel=0.03)
    again = measurement.measure(predictor, x, y, torch.Generator().manual_seed(0))
    assert again == values  # the generator alone decides the noise


def test_options_are_checked() -> None:
    assert NoiseOptions(sigmas=(0, 1)).sigmas == (0.0, 1.0)
    assert resolve_params(NoiseOptions, {"sigmas": [0.01, 0.1]}, "noise").sigmas == (0.01, 0.1)
    for bad, message in (({"sigmas": ()}, "sigmas must be a list of 1 to 100"),
                         ({"sigmas": (-0.1,)}, "finite noise levels >= 0"),
                         ({"sigmas": (float("inf"),)}, "finite noise levels"),
                         ({"sigmas": (0.1, 0.1000000001)}, "sigmas must be distinct"),
                         ({"samples": 0}, "samples must be an integer from 1")):
        with pytest.raises(ValueError, match=message):
            NoiseOptions(**bad)
    with pytest.raises(ValueError, match="power_iterations must be an integer from 1"):
        LipschitzOptions(power_iterations=0)


def test_registration() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(sensitivity_module)
    specs = [s for result in manager.hook.harness_register_measurements() for s in result]
    assert [(s.name, s.options, s.task_kinds) for s in specs] == [
        ("lipschitz", LipschitzOptions, frozenset({"regression", "classification"})),
        ("noise-robustness", NoiseOptions, frozenset({"regression", "classification"})),
    ]
    assert specs[0].factory.resolve() is Lipschitz and specs[1].factory.resolve() is NoiseRobustness
