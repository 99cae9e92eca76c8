"""A fast functional forward of `nn.Sequential` conv nets for second-order inner loops on the CPU.

`SequentialForward.of(model)` returns a callable `forward(params, x)` equal to
`functional_call(model, params, (x,))` in exact arithmetic, or None when the model has a layer it does
not know. Meant for eager loops that differentiate through inner gradients
(`harness.functional.inner_loop(..., autograd=True)`); it does not compose with `torch.func` transforms.
Measured on a 2-core x86-64 CPU, second-order MAML with conv4 on Omniglot 5-way 1-shot (5 query images per
class, meta-batch 16), per meta-iteration: 0.64 s against 0.83 s for `functional_call` at one thread,
0.46 s against 0.58 s at two (benchmarks/test_bench_maml.py, medians side by side).
What makes it faster, each equal in float64 (tests/test_sequential.py):

- Activations are channels-last: batch norm, max-pooling and ReLU then run as vectorised kernels
  (max-pooling 28x28 maps is about 20x faster than in the default layout).
- A ReLU followed by a max-pool runs after the pool, on a quarter of the data: max commutes with the
  monotone ReLU, exactly (in float too: both only select values).
- Convolution and batch norm (batch statistics) are autograd Functions whose backward is itself a
  Function with a written-out backward: the second-order terms cost four efficient convolutions per
  conv layer (PyTorch's own double backward computes a weight-gradient term as a convolution with a
  feature-map-sized kernel, and input gradients nobody asked for) and a few passes over the data per
  batch norm (PyTorch's composite formula takes about 30 times the forward's time). Those backwards
  are written in differentiable torch operations, so third and higher derivatives are right too
  (through PyTorch's own formulas from there on).

In float32 its meta-gradients are at least as close to float64's as `functional_call`'s (3e-4 relative
against 7e-4 on that setting): batch norm normalises maps less their mean (see `_BatchNorm.forward`).

Tried and measured slower on that CPU: grouped convolutions over the tasks of a meta-batch (the
working set of all tasks' activations leaves the caches), `torch.func.vmap` over tasks, an im2col
matrix product for the 1-channel first layer, and `torch.compile` (compiling the unrolled
second-order graph took more than ten minutes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SequentialForward", "batch_norm", "conv2d"]

_CONV = torch.ops.aten.convolution_backward


# --- convolution --------------------------------------------------------------------------------------


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, conf: tuple) -> Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        gx, gw, gb = _Conv2dBackward.apply(gy, x, w, ctx.conf, tuple(ctx.needs_input_grad[:3]))
        return gx, gw, gb, None


class _Conv2dBackward(torch.autograd.Function):
    """(gx, gw, gb) of y = conv(x, w) + b at upstream gy: bilinear in (gy, w) and in (gy, x)."""

    @staticmethod
    def forward(ctx: Any, gy: Tensor, x: Tensor, w: Tensor, conf: tuple, need: tuple) -> tuple:
        stride, padding, dilation, groups = conf
        gx, gw, gb = _CONV(gy, x, w, [w.shape[0]], stride, padding, dilation, False, [0, 0], groups, list(need))
        ctx.save_for_backward(gy, x, w)
        ctx.conf = conf
        return tuple(t if wanted else None for t, wanted in zip((gx, gw, gb), need))

    @staticmethod
    def backward(ctx: Any, ux: Tensor | None, uw: Tensor | None, ub: Tensor | None) -> tuple:
        # d/d(gy, x, w) of <ux, gx> + <uw, gw> + <ub, gb>: gx = conv_w^T gy, gw = corr(x, gy), gb = sum gy.
        gy, x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        d_gy = d_x = d_w = None
        if need_gy:
            d_gy = torch.zeros_like(gy)
            if ux is not None:
                d_gy = d_gy + F.conv2d(ux, w, None, stride, padding, dilation, groups)
            if uw is not None:
                d_gy = d_gy + F.conv2d(x, uw, None, stride, padding, dilation, groups)
            if ub is not None:
                d_gy = d_gy + ub.view(1, -1, 1, 1)
        if need_w and ux is not None:
            d_w = _CONV(gy, ux, w, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False])[1]
        if need_x and uw is not None:
            d_x = _CONV(gy, x, uw, None, stride, padding, dilation, False, [0, 0], groups, [True, False, False])[0]
        return d_gy, d_x, d_w, None, None


def conv2d(x: Tensor, w: Tensor, b: Tensor | None, stride: tuple, padding: tuple, dilation: tuple,
           groups: int) -> Tensor:
    """`F.conv2d` (integer padding) with cheap first and second derivatives."""
    if b is None:
        return _Conv2d.apply(x, w, torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                             (stride, padding, dilation, groups))
    return _Conv2d.apply(x, w, b, (stride, padding, dilation, groups))


# --- batch norm with batch statistics -----------------------------------------------------------------


def _rows(t: Tensor) -> Tensor:
    """[N, C, H, W] as [N*H*W, C]: a view for channels-last memory, so per-channel sums are column sums."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
        # native_batch_norm's CPU kernel for channels-last input sums in one pass: on maps whose mean is far
        # from zero relative to their spread (a first layer on images) its float32 statistics made this
        # path's second-order meta-gradients 4.6 times further from float64's than the default layout's
        # (benchmarks/test_bench_maml.py, `native_fast_float32_vs_float64`). Run on the maps less their
        # mean (torch.mean's summation is accurate), it is accurate again and keeps its speed.
        rough = _rows(x).mean(0)
        y, shift, invstd = torch.native_batch_norm(x - rough[:, None, None], w, b, None, None, True, 0.0, eps)
        mean = rough + shift
        ctx.save_for_backward(x, w, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        x, w, mean, invstd = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:3])
        gx, gw, gb = _BatchNormBackward.apply(gy, x, w, mean, invstd, ctx.eps, need)
        return gx, gw, gb, None


class _BatchNormBackward(torch.autograd.Function):
    """(gx, gw, gb) of batch norm with batch statistics at upstream gy.

    With x^ = (x - mean) * invstd over the M entries of a channel, gb = sum g, gw = sum g x^ and
    gx = w invstd P(g), where P(v) = v - mean(v) - x^ mean(v x^) is the (symmetric) Jacobian of x^ times
    sigma. The backward of S = <ux, gx> + uw gw + ub gb, written out: dS/dg = ub + uw x^ + w invstd
    P(ux); dS/dw = invstd sum(ux P(g)); dS/dx = invstd P(a) + (x^ / M) dS/dsigma with
    a = uw g - w invstd (mean(g x^) ux + mean(ux x^) g) and dS/dsigma = -w invstd^2 sum(ux P(g)).
    """

    @staticmethod
    def forward(ctx: Any, gy: Tensor, x: Tensor, w: Tensor, mean: Tensor, invstd: Tensor, eps: float,
                need: tuple) -> tuple:
        grads = torch.ops.aten.native_batch_norm_backward(gy, x, w, None, None, mean, invstd, True, eps, list(need))
        ctx.save_for_backward(gy, x, w, mean, invstd)
        ctx.eps = eps
        return tuple(t if wanted else None for t, wanted in zip(grads, need))

    @staticmethod
    def backward(ctx: Any, ux: Tensor | None, uw: Tensor | None, ub: Tensor | None) -> tuple:
        gy, x, w, mean, invstd = ctx.saved_tensors
        need_gy, need_x, need_w = ctx.needs_input_grad[:3]
        n, channels, height, width = x.shape
        if torch.is_grad_enabled():
            # This backward is differentiated too (third order): the statistics as functions of x.
            var, mean = torch.var_mean(_rows(x), 0, correction=0)
            invstd = torch.rsqrt(var + ctx.eps)
        g = _rows(gy)
        xhat = (_rows(x) - mean) * invstd
        g_xhat = (g * xhat).mean(0)
        scale = w * invstd
        if ux is not None:
            u = _rows(ux)
            u_xhat = (u * xhat).mean(0)
            u_ghat = (u * (g - g.mean(0) - xhat * g_xhat)).sum(0)
        d_gy = d_x = d_w = None
        if need_gy:
            d = torch.zeros_like(g) if ux is None else scale * (u - u.mean(0) - xhat * u_xhat)
            if uw is not None:
                d = d + uw * xhat
            if ub is not None:
                d = d + ub
            d_gy = d
        if need_w and ux is not None:
            d_w = invstd * u_ghat
        if need_x and (ux is not None or uw is not None):
            a = torch.zeros_like(g)
            if uw is not None:
                a = a + uw * g
            if ux is not None:
                a = a - scale * (g_xhat * u + u_xhat * g)
            d = invstd * (a - a.mean(0) - xhat * (a * xhat).mean(0))
            if ux is not None:
                d = d - (scale * invstd * u_ghat / g.shape[0]) * xhat
            d_x = d

        def unrows(r: Tensor | None) -> Tensor | None:
            return None if r is None else r.view(n, height, width, channels).permute(0, 3, 1, 2)

        return unrows(d_gy), unrows(d_x), d_w, None, None, None, None


def batch_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """Batch norm with batch statistics (training mode, no running statistics) and cheap first and
    second derivatives; equal to `F.batch_norm(x, None, None, w, b, True)`."""
    return _BatchNorm.apply(x, w, b, eps)


# --- the forward --------------------------------------------------------------------------------------


def _channels_last(x: Tensor) -> Tensor:
    if x.shape[1] == 1:  # one channel: both layouts are the same memory; give it channels-last strides
        h, w = x.shape[2:]
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class SequentialForward:
    """`forward(params, x)`: an `nn.Sequential` of Conv2d / BatchNorm2d (batch statistics) / ReLU /
    MaxPool2d / AdaptiveAvgPool2d / Flatten / Linear evaluated on a parameter dict (names as the
    model's); see the module docstring. Build with `SequentialForward.of(model)`."""

    def __init__(self, steps: list[tuple[str, Callable[[Mapping[str, Tensor], Tensor], Tensor]]]) -> None:
        self.steps = steps

    @classmethod
    def of(cls, model: nn.Module) -> SequentialForward | None:
        """The fast forward of `model`, or None when it is not an nn.Sequential of the layers above
        with at least one Conv2d (integer padding, zero padding mode) or holds buffers."""
        if not isinstance(model, nn.Sequential) or any(True for _ in model.buffers()):
            return None
        layers = list(model.named_children())
        if not any(isinstance(layer, nn.Conv2d) for _, layer in layers):
            return None
        steps = []
        i = 0
        while i < len(layers):
            name, layer = layers[i]
            step = cls._step(name, layer)
            if step is None:
                return None
            following = layers[i + 1][1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.ReLU) and isinstance(following, nn.MaxPool2d):
                # max-pool(relu(x)) == relu(max-pool(x)): pool first, on four times the data less.
                steps += [(layers[i + 1][0], cls._step(*layers[i + 1])), (name, step)]
                i += 2
            else:
                steps.append((name, step))
                i += 1
        return cls(steps)

    @staticmethod
    def _step(name: str, layer: nn.Module) -> Callable[[Mapping[str, Tensor], Tensor], Tensor] | None:
        if isinstance(layer, nn.Conv2d):
            if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
                return None
            conf = (_pair(layer.stride), _pair(layer.padding), _pair(layer.dilation), layer.groups)
            has_bias = layer.bias is not None
            return lambda p, h: conv2d(h, p[f"{name}.weight"], p[f"{name}.bias"] if has_bias else None, *conf)
        if isinstance(layer, nn.BatchNorm2d):
            if layer.track_running_stats or not layer.affine:
                return None
            return lambda p, h: batch_norm(h, p[f"{name}.weight"], p[f"{name}.bias"], layer.eps)
        if isinstance(layer, nn.ReLU):
            return lambda p, h: F.relu(h)
        if isinstance(layer, nn.MaxPool2d):
            if layer.return_indices:
                return None
            return lambda p, h: F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                             layer.ceil_mode)
        if isinstance(layer, nn.AdaptiveAvgPool2d):
            return lambda p, h: F.adaptive_avg_pool2d(h, layer.output_size)
        if isinstance(layer, nn.Flatten):
            return lambda p, h: h.flatten(layer.start_dim, layer.end_dim)
        if isinstance(layer, nn.Linear):
            has_bias = layer.bias is not None
            return lambda p, h: F.linear(h, p[f"{name}.weight"], p[f"{name}.bias"] if has_bias else None)
        return None

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        h = _channels_last(x) if x.dim() == 4 else x
        for _, step in self.steps:
            h = step(params, h)
        return h
