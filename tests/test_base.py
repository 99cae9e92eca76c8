"""The base classes' shared behaviour: an adapted learner as a function (Predictor) and its derivatives."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import Algorithm, Predictor


class Cubic(Algorithm):
    """predict(state, x) = state * x**3 (+ the default derivative path unless `direct` answers itself)."""

    def __init__(self, direct: bool = False) -> None:
        self.direct = direct

    def meta_parameters(self):
        return {}

    def meta_train_step(self, batch):
        return 0.0

    def adapt(self, support_x, support_y, steps):
        return [2.0] * (steps + 1)

    def predict(self, state, x):
        return state * x**3

    def predict_derivatives(self, state, x, order):
        if not self.direct:
            return None
        return [torch.full_like(x, 7.0) for _ in range(order)]


def test_derivatives_of_the_adapted_function_by_autograd():
    x = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(1)
    first, second = Predictor(Cubic(), 2.0).derivatives(x, 2)
    torch.testing.assert_close(first, 6.0 * x**2)
    torch.testing.assert_close(second, 12.0 * x)
    assert first.shape == x.shape and not first.requires_grad and not second.requires_grad
    (only,) = Predictor(Cubic(), 2.0).derivatives(x, 1)
    torch.testing.assert_close(only, 6.0 * x**2)


def test_derivatives_work_under_no_grad_and_leave_the_input_alone():
    x = torch.linspace(-1, 1, 5).unsqueeze(1)
    with torch.no_grad():
        (first,) = Predictor(Cubic(), 1.0).derivatives(x, 1)
    torch.testing.assert_close(first, 3.0 * x**2)
    assert not x.requires_grad


def test_a_learner_that_answers_derivatives_itself_is_asked():
    x = torch.zeros(4, 1)
    derivatives = Predictor(Cubic(direct=True), 2.0).derivatives(x, 2)
    assert [d.tolist() for d in derivatives] == [[[7.0]] * 4] * 2


def test_a_relu_networks_second_derivative_is_zero_not_an_error():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))

    class Net(Cubic):
        def predict(self, state, x):
            return net(x)

    x = torch.linspace(-1, 1, 6).unsqueeze(1)
    first, second = Predictor(Net(), None).derivatives(x, 2)
    h = 1e-3  # away from the kinks a ReLU net is linear: central differences are exact up to rounding
    with torch.no_grad():
        numeric = (net(x + h) - net(x - h)) / (2 * h)
    torch.testing.assert_close(first, numeric, atol=1e-3, rtol=1e-3)
    assert torch.equal(second, torch.zeros_like(x))


def test_bad_requests_are_refused_clearly():
    with pytest.raises(ValueError, match=r"order must be a positive integer, got 0"):
        Predictor(Cubic(), 1.0).derivatives(torch.zeros(3, 1), 0)
    with pytest.raises(ValueError, match=r"scalar inputs shaped \[points, 1\], got \(3, 2\)"):
        Predictor(Cubic(), 1.0).derivatives(torch.zeros(3, 2), 1)

    class Short(Cubic):
        def predict_derivatives(self, state, x, order):
            return [x]

    with pytest.raises(RuntimeError, match="returned 1 derivatives for order 2"):
        Predictor(Short(), 1.0).derivatives(torch.zeros(3, 1), 2)
