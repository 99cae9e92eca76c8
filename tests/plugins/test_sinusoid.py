"""The sinusoid suite: episode shapes and distributions, determinism, splits, config validation."""

from __future__ import annotations

import math

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness.errors import UsageError
from harness.specs import TaskSuiteSpec, resolve_params
from metaharness_plugins.suites import sinusoid
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite


def _fit_sine(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """Least-squares fit of y = a sin x + b cos x, i.e. A sin(x - phi) with a = A cos phi, b = -A sin phi.
    Returns (A, phi, max residual)."""
    x64, y64 = x.double().flatten(), y.double().flatten()
    design = torch.stack([torch.sin(x64), torch.cos(x64)], dim=1)
    coef = torch.linalg.lstsq(design, y64.unsqueeze(1)).solution.flatten()
    a, b = float(coef[0]), float(coef[1])
    residual = float((design @ coef - y64).abs().max())
    return math.hypot(a, b), math.atan2(-b, a), residual


def test_shapes_dtype_and_device(suite: SinusoidSuite) -> None:
    batch = suite.sample(7, torch.Generator().manual_seed(0), "train")
    assert batch.num_tasks == 7
    assert batch.support_x.shape == batch.support_y.shape == (7, 10, 1)
    assert batch.query_x.shape == batch.query_y.shape == (7, 10, 1)
    for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        assert t.dtype == torch.float32
        assert t.device.type == "cpu"


def test_values_come_from_one_sine_per_task() -> None:
    suite = SinusoidSuite(SinusoidConfig(shots=5, query=20))
    batch = suite.sample(300, torch.Generator().manual_seed(3), "val")
    xs = torch.cat([batch.support_x, batch.query_x], dim=1)
    ys = torch.cat([batch.support_y, batch.query_y], dim=1)
    assert float(xs.min()) >= -5.0 and float(xs.max()) <= 5.0
    amplitudes, phases = [], []
    for i in range(batch.num_tasks):
        amplitude, phase, residual = _fit_sine(xs[i], ys[i])
        assert residual < 1e-4, f"task {i} is not a sine wave (residual {residual})"
        amplitudes.append(amplitude)
        phases.append(phase)
    assert 0.1 - 1e-4 <= min(amplitudes) and max(amplitudes) <= 5.0 + 1e-4
    assert -1e-4 <= min(phases) and max(phases) <= math.pi + 1e-4
    # The ranges are covered, not just respected: 300 uniform draws reach near both ends.
    assert min(amplitudes) < 0.5 and max(amplitudes) > 4.6
    assert min(phases) < 0.3 and max(phases) > math.pi - 0.3
    assert float(xs.min()) < -4.9 and float(xs.max()) > 4.9
    # Support and query points of a task share the task's sine: |y| <= A everywhere.
    assert all(float(ys[i].abs().max()) <= amplitudes[i] + 1e-4 for i in range(batch.num_tasks))


def test_same_seed_same_batch_different_seed_different(suite: SinusoidSuite) -> None:
    a = suite.sample(5, torch.Generator().manual_seed(11), "train")
    b = suite.sample(5, torch.Generator().manual_seed(11), "train")
    c = suite.sample(5, torch.Generator().manual_seed(12), "train")
    for name in ("support_x", "support_y", "query_x", "query_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))


def test_sampling_ignores_the_global_rng(suite: SinusoidSuite) -> None:
    torch.manual_seed(0)
    a = suite.sample(3, torch.Generator().manual_seed(5), "test")
    torch.manual_seed(99)
    b = suite.sample(3, torch.Generator().manual_seed(5), "test")
    assert torch.equal(a.query_y, b.query_y)


def test_test_split_uses_test_shots_and_test_query() -> None:
    suite = SinusoidSuite(SinusoidConfig(shots=10, test_shots=5, query=7, test_query=30))
    generator = torch.Generator().manual_seed(0)
    train = suite.sample(4, generator, "train")
    val = suite.sample(4, generator, "val")
    test = suite.sample(4, generator, "test")
    assert train.support_x.shape == val.support_x.shape == (4, 10, 1)
    assert train.query_x.shape == val.query_x.shape == (4, 7, 1)
    assert test.support_x.shape == test.support_y.shape == (4, 5, 1)
    assert test.query_x.shape == test.query_y.shape == (4, 30, 1)


def test_test_shots_default_to_shots() -> None:
    suite = SinusoidSuite(SinusoidConfig(shots=3))
    batch = suite.sample(2, torch.Generator().manual_seed(0), "test")
    assert batch.support_x.shape == (2, 3, 1)
    assert batch.query_x.shape == (2, 100, 1)


def test_unknown_split_is_rejected(suite: SinusoidSuite) -> None:
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*train, val, test"):
        suite.sample(2, torch.Generator().manual_seed(0), "valid")


@pytest.mark.parametrize("field", ["shots", "test_shots", "query", "test_query"])
@pytest.mark.parametrize("value", [0, -3, 100_001, 10**12])
def test_config_rejects_sizes_out_of_range(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be an integer from 1 to 100,000 \(.*\), got {value}$"):
        SinusoidConfig(**{field: value})


def test_config_error_message_for_shots() -> None:
    with pytest.raises(ValueError) as info:
        SinusoidConfig(shots=0)
    assert str(info.value) == "shots must be an integer from 1 to 100,000 (K >= 1), got 0"


def test_grid_overrides_resolve_and_errors_name_the_key() -> None:
    config = resolve_params(SinusoidConfig, {"shots": 5, "test_shots": 5}, "suite 'sinusoid'")
    assert config == SinusoidConfig(shots=5, test_shots=5)
    with pytest.raises(
        UsageError, match=r"suite 'sinusoid': shots must be an integer from 1 to 100,000 \(K >= 1\), got -1"
    ):
        resolve_params(SinusoidConfig, {"shots": -1}, "suite 'sinusoid'")


def test_model_is_the_papers_mlp(suite: SinusoidSuite) -> None:
    torch.manual_seed(0)
    model = suite.build_model()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 40), (40, 40), (40, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in model) == 2
    assert model(torch.zeros(6, 1)).shape == (6, 1)
    torch.manual_seed(0)
    again = suite.build_model()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_a_smooth_activation_changes_the_model_not_the_episodes_nor_old_fingerprints(registry) -> None:
    from harness.cells import resolve_cell
    from harness.specs import Budget, Cell

    smooth = SinusoidSuite(SinusoidConfig(activation="softplus"))
    torch.manual_seed(0)
    model = smooth.build_model()
    assert sum(isinstance(m, nn.Softplus) for m in model) == 2 and not any(isinstance(m, nn.ReLU) for m in model)
    torch.manual_seed(0)
    relu = SinusoidSuite(SinusoidConfig()).build_model()  # the same initial weights, another non-linearity
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), relu.parameters()))
    with pytest.raises(ValueError, match="activation must be one of relu, tanh, softplus, got 'gelu'"):
        SinusoidConfig(activation="gelu")
    cells = {a: resolve_cell(Cell("maml", (), "sinusoid", (() if a == "relu" else (("activation", a),)), "cpu", 0,
                                  Budget(iterations=2)), registry) for a in ("relu", "tanh")}
    assert "activation" not in cells["relu"]["config"]["suite"]["config"]  # as before the option existed
    assert cells["tanh"]["config"]["suite"]["config"]["activation"] == "tanh"
    assert cells["relu"]["seeds"]["test"] == cells["tanh"]["seeds"]["test"]  # the same test episodes


def test_every_accepted_activation_builds_its_own_module() -> None:
    # The names the configs accept (regression.ACTIVATIONS) and the modules backbones builds are one list.
    from metaharness_plugins.backbones import activation
    from metaharness_plugins.regression import ACTIVATIONS

    built = {name: type(activation(name)) for name in ACTIVATIONS}
    assert built == {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus}
    for name in ACTIVATIONS:
        model = SinusoidSuite(SinusoidConfig(activation=name)).build_model()
        assert sum(isinstance(m, built[name]) for m in model) == 2


def test_loss_and_metric_are_mse(suite: SinusoidSuite) -> None:
    prediction = torch.tensor([[1.0], [2.0], [4.0]])
    target = torch.tensor([[1.0], [0.0], [1.0]])
    assert float(suite.loss(prediction, target)) == pytest.approx((0 + 4 + 9) / 3)
    metric = suite.metric(prediction, target)
    assert metric.shape == ()
    assert float(metric) == pytest.approx(13 / 3)
    assert (SinusoidSuite.metric_name, SinusoidSuite.metric_label, SinusoidSuite.higher_is_better) == (
        "mse",
        "MSE",
        False,
    )


def test_registers_through_pluggy() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(sinusoid)
    specs = [spec for result in manager.hook.harness_register_task_suites() for spec in result]
    assert [spec.name for spec in specs] == ["sinusoid"]
    spec = specs[0]
    assert isinstance(spec, TaskSuiteSpec)
    assert spec.task_kind == "regression" and spec.config is SinusoidConfig and spec.description
    built = spec.factory(SinusoidConfig(shots=2))
    assert isinstance(built, SinusoidSuite)
    assert built.sample(1, torch.Generator().manual_seed(0), "train").support_x.shape == (1, 2, 1)


def test_maml_code_initialisation_option() -> None:
    torch.manual_seed(0)
    paper = SinusoidSuite(SinusoidConfig(init="maml")).build_model()
    for layer in paper:
        if isinstance(layer, torch.nn.Linear):
            weight, bias = layer.weight.detach(), layer.bias.detach()
            assert float(weight.abs().max()) <= 0.02 and float(bias.abs().max()) == 0.0
            assert 0.005 < float(weight.std()) < 0.012
    torch.manual_seed(0)
    default = SinusoidSuite(SinusoidConfig()).build_model()
    assert float(default[0].weight.detach().abs().max()) > 0.1  # PyTorch's own initialisation
    with pytest.raises(ValueError, match="init must be one of torch, maml, got 'xavier'"):
        SinusoidConfig(init="xavier")
