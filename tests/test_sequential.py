"""harness.sequential: the written-out first and second derivatives of convolution and batch norm
(gradcheck and gradgradcheck in float64, both memory layouts), and the fast forward of a conv net
against `functional_call`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from harness.sequential import SequentialForward, batch_norm, conv2d

LAYOUTS = {"default": torch.contiguous_format, "channels_last": torch.channels_last}


def _leaf(*shape: int, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("stride", "padding", "bias"), [((1, 1), (1, 1), True), ((2, 2), (0, 0), False)])
def test_conv2d_first_and_second_derivatives(layout: str, stride: tuple, padding: tuple, bias: bool) -> None:
    torch.manual_seed(0)
    fmt = LAYOUTS[layout]
    x, w = _leaf(2, 3, 7, 7, layout=fmt), _leaf(4, 3, 3, 3, layout=fmt)
    b = _leaf(4) if bias else None
    inputs = (x, w, b) if bias else (x, w)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return conv2d(x, w, b, stride, padding, (1, 1), 1)

    torch.testing.assert_close(f(*inputs), F.conv2d(x, w, b, stride, padding), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    # A data input that needs no gradient (a first layer): only the weights' derivatives.
    assert torch.autograd.gradgradcheck(lambda w: f(x.detach(), w), (w,))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batch_norm_first_and_second_derivatives(layout: str) -> None:
    torch.manual_seed(1)
    x, w, b = _leaf(4, 3, 5, 5, layout=LAYOUTS[layout]), _leaf(3), _leaf(3)

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return batch_norm(x, w, b, 1e-5)

    torch.testing.assert_close(f(x, w, b), F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x: f(x, w.detach(), b.detach()), (x,))


def test_batch_norm_statistics_are_accurate_in_float32_channels_last() -> None:
    """Maps whose mean is far from zero relative to their spread (a first layer on images): in float32 and
    channels-last the normalised output is as close to float64's as PyTorch's default-layout batch norm
    (its channels-last CPU kernel is less accurate, and second-order meta-gradients amplify that)."""
    torch.manual_seed(2)
    x = (3.0 + 0.05 * torch.randn(5, 64, 28, 28)).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(64) + 0.5, torch.randn(64)
    exact = F.batch_norm(x.double(), None, None, w.double(), b.double(), True, 0.0, 1e-5)
    ours = batch_norm(x, w, b, 1e-5)
    default = F.batch_norm(x.contiguous(), None, None, w, b, True, 0.0, 1e-5)
    error, reference = (float((y.double() - exact).abs().max()) for y in (ours, default))
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert error <= 2 * reference + 1e-6, (error, reference)


def _batch_norm_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batch norm from elementary operations (PyTorch's own has no third derivative)."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def test_third_derivatives_are_right_too() -> None:
    torch.manual_seed(3)
    x, w, g, b = _leaf(2, 1, 5, 5), _leaf(2, 1, 3, 3), _leaf(2), _leaf(2)

    def third(conv, norm) -> list[torch.Tensor]:
        out = norm(conv(x, w), g, b).pow(3).sum()
        first = torch.autograd.grad(out, (w, g), create_graph=True)
        second = torch.autograd.grad(sum(t.pow(2).sum() for t in first), (x, w, g), create_graph=True)
        return list(torch.autograd.grad(sum(t.sum() for t in second), (x, w, g, b), allow_unused=True,
                                        materialize_grads=True))

    ours = third(lambda x, w: conv2d(x, w, None, (1, 1), (1, 1), (1, 1), 1), lambda h, g, b: batch_norm(h, g, b, 1e-5))
    theirs = third(lambda x, w: F.conv2d(x, w, None, 1, 1), _batch_norm_reference)
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _convnet() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()


def test_forward_and_its_second_derivatives_equal_functional_call() -> None:
    model = _convnet()
    forward = SequentialForward.of(model)
    assert forward is not None
    assert [name for name, _ in forward.steps] == ["0", "1", "3", "2", "4", "5", "6", "7", "8", "9"]  # pool first
    params = dict(model.named_parameters())
    x, y = torch.randn(6, 1, 12, 12, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def meta_gradient(fn) -> list[torch.Tensor]:
        # One second-order inner step, then the query loss: what MAML differentiates.
        inner = torch.autograd.grad(F.cross_entropy(fn(params, x), y), list(params.values()), create_graph=True)
        fast = {name: p - 0.5 * g for (name, p), g in zip(params.items(), inner)}
        return list(torch.autograd.grad(F.cross_entropy(fn(fast, x.flip(0)), y), list(params.values())))

    def plain(p: dict, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (inputs,))

    torch.testing.assert_close(forward(params, x), plain(params, x), rtol=0, atol=1e-12)
    for got, want in zip(meta_gradient(forward), meta_gradient(plain)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert float(want.abs().max()) > 0 or want.numel() == 4  # (conv biases before batch norm get none)


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)),  # no convolution: nothing to gain
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()),  # running statistics (buffers)
    nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten()),
    nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten()),  # a layer it does not know
    nn.Conv2d(1, 2, 3),
], ids=["mlp", "running-stats", "same-padding", "tanh", "not-sequential"])
def test_models_it_does_not_cover_get_none(model: nn.Module) -> None:
    assert SequentialForward.of(model) is None
