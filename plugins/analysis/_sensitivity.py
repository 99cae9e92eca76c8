"""The sensitivity measurements themselves (the `sensitivity` plugin registers them; imported when a cell
that enables one builds it): input-Jacobian norms, the layer-norm product bound, and noisy-input scores."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.measuring import Measurement

#: Activations and reshapes with a Lipschitz constant (in L2) of at most the factor given; the logistic
#: sigmoid's derivative is at most 1/4. LeakyReLU and ELU qualify while their slopes stay within 1.
LIPSCHITZ_FACTORS: dict[type, float] = {nn.ReLU: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0, nn.Softplus: 1.0,
                                        nn.Identity: 1.0, nn.Flatten: 1.0, nn.Sigmoid: 0.25}
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)


def input_jacobian_norms(predictor: Any, x: Tensor) -> Tensor | None:
    """[n] spectral norms of d f(x)_i / d x_i for the n query points (gradient norms for scalar outputs),
    in float64; None when the predictions carry no graph to the inputs (a learner that is not
    differentiable in its input: a finite difference, a nearest neighbour by index).

    One backward pass per output dimension k, of the sum over points of f_k: for a pointwise model (an
    MLP) that is each point's own derivative. Under batch statistics (conv4's batch norm) it also holds the
    point's share (about 1/n) in the other points' outputs through the batch's mean and variance.
    """
    with torch.enable_grad():
        point = x.detach().clone().requires_grad_(True)
        out = predictor(point)
        if not isinstance(out, Tensor) or not out.requires_grad:
            return None
        if out.dim() == 0 or out.shape[0] != point.shape[0]:
            raise ValueError(f"the lipschitz measurement needs one prediction per query point: "
                             f"{point.shape[0]} inputs gave predictions shaped {tuple(out.shape)}")
        flat = out.reshape(out.shape[0], -1)
        rows = []
        for k in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(flat[:, k].sum(), point, retain_graph=k + 1 < flat.shape[1],
                                          allow_unused=True)
            rows.append((torch.zeros_like(point) if grad is None else grad).reshape(len(point), -1))
    jacobians = torch.stack(rows, dim=1).to(_exact(x.device))  # [n, outputs, inputs]
    # An adaptation that blew up leaves non-finite Jacobians: those points' norms are NaN, and so are the
    # episode's mean and max (the cell's summary counts finite values only); no SVD of them is attempted.
    finite = torch.isfinite(jacobians).flatten(1).all(1)
    norms = torch.full((len(jacobians),), math.nan, dtype=jacobians.dtype, device=jacobians.device)
    if bool(finite.any()):
        norms[finite] = torch.linalg.matrix_norm(jacobians[finite], ord=2)
    return norms


def _exact(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _layers(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The leaves of nested nn.Sequential containers, in order, with their parameter-name prefixes."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _layers(child, f"{prefix}{name}.")
    else:
        yield prefix, module


def conv_operator_norm(conv: nn.Module, weight: Tensor, shape: tuple[int, ...], iterations: int,
                       generator: torch.Generator) -> float:
    """The operator norm (largest singular value) of the linear map v -> conv(v) without bias on inputs of
    `shape` (one sample), by power iteration on A^T A, A^T applied as the vector-Jacobian product. It
    converges from below; stops after `iterations` or once the estimate changes by less than 1e-9 of
    itself."""
    dtype = _exact(weight.device)
    w = weight.detach().to(dtype)

    def operator(v: Tensor) -> Tensor:
        return conv._conv_forward(v, w, None)

    v = torch.randn(shape, generator=generator, dtype=torch.float64).to(weight.device, dtype)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iterations):
        image, adjoint = torch.func.vjp(operator, v)
        previous, sigma = sigma, float(image.norm())
        (back,) = adjoint(image)
        norm = back.norm()
        if float(norm) == 0.0:
            return sigma
        v = back / norm
        if abs(sigma - previous) <= 1e-9 * sigma:
            break
    return float(operator(v).norm())


def _layer_factor(module: nn.Module) -> float | None:
    """The Lipschitz factor of a parameter-free layer, or None when it has none this bound accepts."""
    if type(module) in LIPSCHITZ_FACTORS:
        return LIPSCHITZ_FACTORS[type(module)]
    if isinstance(module, nn.LeakyReLU) and abs(module.negative_slope) <= 1:
        return 1.0
    if isinstance(module, nn.ELU) and 0 <= module.alpha <= 1:
        return 1.0
    if isinstance(module, POOLS):
        kernel, stride = _tuple(module.kernel_size), _tuple(module.stride or module.kernel_size)
        dilation = _tuple(getattr(module, "dilation", 1))
        if (any(k > s for k, s in zip(kernel, stride)) or any(d != 1 for d in dilation)
                or any(_tuple(module.padding)) or module.ceil_mode):
            return None  # overlapping, padded or partial windows
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            return 1.0  # disjoint windows: |max a - max b| <= ||a - b|| on each
        window = 1
        for k in kernel:
            window *= k
        return window ** -0.5  # the mean of m disjoint entries has norm 1 / sqrt(m)
    return None


def _tuple(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def spectral_bound(predictor: Any, x: Tensor, iterations: int, generator: torch.Generator) -> float | None:
    """The product of the layers' operator norms (times the activations' factors) of the adapted model, an
    upper bound of its Lipschitz constant in L2 (Szegedy et al. 2014, section 4.3); NaN when the adapted
    parameters are not finite; None where it does not
    apply: the learner's model is not a chain of Linear / convolution layers and Lipschitz activations (batch
    norm with batch statistics is not a fixed map), its state is not that model's parameters, or its
    predictions are not that chain evaluated with the state (checked on `x`)."""
    model, state = getattr(predictor.algorithm, "model", None), predictor.state
    if not isinstance(model, nn.Module) or not isinstance(state, Mapping):
        return None
    if set(state) != {name for name, _ in model.named_parameters()}:
        return None
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if isinstance(t, Tensor)):
        return math.nan  # an adaptation that blew up: no bound for this episode
    bound, h = 1.0, x
    with torch.no_grad():
        for prefix, layer in _layers(model):
            if isinstance(layer, nn.Linear):
                weight, bias = state[prefix + "weight"], state.get(prefix + "bias")
                bound *= float(torch.linalg.matrix_norm(weight.detach().to(_exact(weight.device)), ord=2))
                h = F.linear(h, weight, bias)
            elif isinstance(layer, CONVOLUTIONS) and layer.groups == 1:
                weight, bias = state[prefix + "weight"], state.get(prefix + "bias")
                bound *= conv_operator_norm(layer, weight, (1, *h.shape[1:]), iterations, generator)
                h = layer._conv_forward(h, weight, bias)
            else:
                factor = _layer_factor(layer)
                if factor is None or any(True for _ in layer.parameters()):
                    return None
                bound *= factor
                h = layer(h)
        predicted = predictor(x)
    if not isinstance(predicted, Tensor) or predicted.shape != h.shape:
        return None
    scale = float(predicted.detach().abs().max()) if predicted.numel() else 0.0
    if not torch.allclose(h, predicted, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
        return None  # predict is not the plain model with these parameters
    return bound


class Lipschitz(Measurement):
    """Mean and max over the query points of ||d f(x_i) / d x_i||_2, and the layer-norm product bound."""

    def columns(self) -> dict[str, tuple[str, bool | None]]:
        columns: dict[str, tuple[str, bool | None]] = {
            "lipschitz_grad_mean": ("Lipschitz ‖∂f/∂x‖ mean", None),
            "lipschitz_grad_max": ("Lipschitz ‖∂f/∂x‖ max", None),
        }
        if self.options.bound:
            columns["lipschitz_spectral_bound"] = ("Lipschitz bound ∏‖W‖", None)
        return columns

    def measure(self, predictor: Any, query_x: Tensor, query_y: Tensor,
                generator: torch.Generator) -> dict[str, float]:
        out: dict[str, float] = {}
        norms = input_jacobian_norms(predictor, query_x)
        if norms is not None:
            out["lipschitz_grad_mean"] = float(norms.mean())
            out["lipschitz_grad_max"] = float(norms.max())
        if self.options.bound:
            bound = spectral_bound(predictor, query_x, self.options.power_iterations, generator)
            if bound is not None:
                out["lipschitz_spectral_bound"] = bound
        return out


class NoiseRobustness(Measurement):
    """The suite's score on the query set with N(0, sigma^2) noise added to every input, per sigma."""

    def _label(self) -> str:
        return self.suite.metric_label or self.suite.metric_name

    def _column(self, sigma: float) -> str:
        return f"noise_{self.options.sigma_name(sigma)}_metric"

    def columns(self) -> dict[str, tuple[str, bool | None]]:
        return {self._column(s): (f"{self._label()} at noise σ={self.options.sigma_name(s)}",
                                  bool(self.suite.higher_is_better))
                for s in self.options.sigmas}

    def measure(self, predictor: Any, query_x: Tensor, query_y: Tensor,
                generator: torch.Generator) -> dict[str, float]:
        noisy_sigmas = [s for s in self.options.sigmas if s > 0]
        totals = dict.fromkeys(noisy_sigmas, 0.0)
        for _ in range(self.options.samples if noisy_sigmas else 0):
            noise = torch.randn(query_x.shape, generator=generator, dtype=torch.float64)
            noise = noise.to(query_x.device, query_x.dtype)
            for sigma in noisy_sigmas:
                totals[sigma] += float(self.suite.score(predictor, query_x + sigma * noise, query_y))
        out = {self._column(s): total / self.options.samples for s, total in totals.items()}
        if 0.0 in self.options.sigmas:  # the clean score, exactly as the metric is computed
            out[self._column(0.0)] = float(self.suite.score(predictor, query_x, query_y))
        return out
