"""The classical derivative baselines themselves (the `derivative_baselines` plugin registers them;
imported when a cell builds one). Sources are named in derivative_baselines.py and beside each method."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import Algorithm, TaskBatch

Array = np.ndarray


def _as_points(support_x: torch.Tensor, support_y: torch.Tensor, name: str) -> tuple[Array, Array]:
    """One task's support set as sorted float64 arrays (x strictly increasing): points sharing an x are
    merged into one at the mean of their y, since no difference or spline is defined across them."""
    if support_x.dim() != 2 or support_x.shape[1] != 1:
        raise ValueError(f"{name} differentiates functions of one variable: support_x must be shaped [K, 1], "
                         f"got {tuple(support_x.shape)}")
    if support_y.numel() != support_x.shape[0] or support_y.dim() not in (1, 2):
        raise ValueError(f"{name} needs one target per support point: support_y must be shaped [K, 1] like "
                         f"support_x {tuple(support_x.shape)}, got {tuple(support_y.shape)}")
    x = support_x.detach().reshape(-1).cpu().double().numpy()
    y = support_y.detach().reshape(-1).cpu().double().numpy()
    xs, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ys = np.bincount(inverse, weights=y) / counts
    return xs, ys


def _query(x: torch.Tensor, name: str) -> Array:
    if x.dim() != 2 or x.shape[1] != 1:
        raise ValueError(f"{name} evaluates functions of one variable: x must be shaped [Q, 1], "
                         f"got {tuple(x.shape)}")
    return x.detach().reshape(-1).cpu().double().numpy()


def _tensor(values: Array, like: torch.Tensor) -> torch.Tensor:
    """A [Q, 1] tensor on `like`'s device and dtype."""
    return torch.as_tensor(values.reshape(-1, 1), dtype=like.dtype, device=like.device)


def second_differences(x: Array, y: Array) -> Array:
    """f'' at each point: the second derivative of the parabola through three neighbouring points,
    2 f[x_{i-1}, x_i, x_{i+1}] (Fornberg 1988's three-point weights on an arbitrary grid); at each end the
    nearest interior stencil (one-sided). Exact for quadratics; needs three points."""
    slopes = np.diff(y) / np.diff(x)
    centred = 2.0 * np.diff(slopes) / (x[2:] - x[:-2])
    return np.concatenate([centred[:1], centred, centred[-1:]])


@dataclass(frozen=True)
class PointEstimates:
    """A fitted state: derivative estimates at the sorted support points, interpolated between them."""

    x: Array
    y: Array
    derivatives: tuple[Array, ...]


class FitsEachTask(Algorithm):
    """A learner that fits each task's support set alone: nothing is meta-learned, so `meta_parameters`
    is empty, `meta_train_step` returns 0.0 at once and the runner skips meta-training altogether."""

    #: The runner skips meta-training and validation: straight to the test episodes.
    meta_trains = False

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        """None: nothing is learned across tasks."""
        return {}

    def meta_train_step(self, batch: TaskBatch) -> float:
        """Nothing to meta-train: returns 0.0 without touching the batch."""
        return 0.0


class ClassicalBaseline(FitsEachTask):
    """A numerical method on each task's support points: `adapt` returns the one fitted state, repeated
    when the harness asks for more steps. `fit` and `derivatives_of` are the method.
    """

    #: The name the plugin registers (for errors and the support-size rule).
    name = ""
    #: Highest derivative order the method answers.
    max_order = 2

    def __init__(self, hparams: Any, model: nn.Module, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        # The grid checks every pair before any cell runs (`derivative_baselines.check`, the same rule);
        # this is the second line of defence for an algorithm built some other way (a test, a script).
        reason = hparams.impossible("", getattr(suite, "config", None))
        if reason:
            raise ValueError(reason)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Any]:
        """[the fit to this support set] * (steps + 1): one fit, whatever the number of steps."""
        x, y = _as_points(support_x, support_y, self.name)
        order = int(getattr(self.suite.config, "order", 1) or 1)
        need, why = self.hparams.requirement(min(order, self.max_order))
        if len(x) < need:
            raise ValueError(f"{self.name} needs at least {need} distinct support points ({why}), "
                             f"got {len(x)}")
        state = self.fit(x, y)
        return [state] * (steps + 1)

    def fit(self, x: Array, y: Array) -> Any:
        """The method's state for sorted, distinct support points `x` and their values `y`."""
        raise NotImplementedError

    def values_of(self, state: Any, q: Array) -> Array:
        """The fitted function at the query points `q`."""
        raise NotImplementedError

    def derivatives_of(self, state: Any, q: Array, order: int) -> list[Array]:
        """[f', f'', ...][:order] of the fit at `q`."""
        raise NotImplementedError

    def predict(self, state: Any, x: torch.Tensor) -> torch.Tensor:
        """The fitted function at `x` ([Q, 1]), on x's device and dtype."""
        return _tensor(self.values_of(state, _query(x, self.name)), x)

    def predict_derivatives(self, state: Any, x: torch.Tensor, order: int) -> list[torch.Tensor]:
        """[f', f''][:order] of the fit at `x`, each [Q, 1] on x's device and dtype."""
        if not 1 <= order <= self.max_order:
            raise ValueError(f"{self.name} answers derivatives of order 1 to {self.max_order}, "
                             f"asked for {order}")
        return [_tensor(d, x) for d in self.derivatives_of(state, _query(x, self.name), order)]


class _FiniteDifferences(ClassicalBaseline):
    """Derivative estimates at the support points, linearly interpolated in between and held constant
    outside them (`numpy.interp`); the function itself is the piecewise-linear interpolant of the points."""

    max_order = 2

    def point_derivatives(self, x: Array, y: Array) -> tuple[Array, Array | None]:
        """(f', f'' or None with fewer than three points) at each support point."""
        raise NotImplementedError

    def fit(self, x: Array, y: Array) -> PointEstimates:
        first, second = self.point_derivatives(x, y)
        return PointEstimates(x, y, (first,) if second is None else (first, second))

    def values_of(self, state: PointEstimates, q: Array) -> Array:
        return np.interp(q, state.x, state.y)

    def derivatives_of(self, state: PointEstimates, q: Array, order: int) -> list[Array]:
        if order > len(state.derivatives):
            raise ValueError(f"{self.name} needs at least 3 support points for a second derivative, "
                             f"got {len(state.x)}")
        return [np.interp(q, state.x, d) for d in state.derivatives[:order]]


class CentralDifferences(_FiniteDifferences):
    """`fd-central`: second-order accurate three-point differences on the non-uniform support grid.

    f' is `numpy.gradient` with the sample coordinates: at interior points the non-uniform centred
    three-point formula, at the ends the one-sided three-point (second-order) formula, the weights
    Fornberg (1988)'s algorithm gives for three arbitrarily spaced points; with two points, the slope.
    f'' is the three-point second difference (`second_differences`). Both are exact for quadratics.
    """

    name = "fd-central"

    def point_derivatives(self, x: Array, y: Array) -> tuple[Array, Array | None]:
        if len(x) == 2:
            return np.gradient(y, x, edge_order=1), None
        return np.gradient(y, x, edge_order=2), second_differences(x, y)


class ForwardDifferences(_FiniteDifferences):
    """`fd-forward`: first-order one-sided differences, f'(x_i) = (y_{i+1} - y_i) / (x_{i+1} - x_i) and
    f''(x_i) = 2 f[x_i, x_{i+1}, x_{i+2}] (the last point, or last two, take the backward stencil that
    ends there). Exact for straight lines (f') and parabolas (f'')."""

    name = "fd-forward"

    def point_derivatives(self, x: Array, y: Array) -> tuple[Array, Array | None]:
        slopes = np.diff(y) / np.diff(x)
        first = np.concatenate([slopes, slopes[-1:]])
        if len(x) < 3:
            return first, None
        centred = second_differences(x, y)[1:-1]  # stencil (i, i+1, i+2) at index i
        return first, np.concatenate([centred, centred[-1:], centred[-1:]])


@dataclass(frozen=True)
class SplineFit:
    """A fitted smoothing spline (a scipy BSpline) and the support interval it was fitted on."""

    spline: Any
    low: float
    high: float


class SmoothingSpline(ClassicalBaseline):
    """`spline`: scipy's `make_smoothing_spline`, the cubic smoothing spline of Reinsch (1967), its
    penalty chosen by GCV (Craven & Wahba 1979) when `smoothing` is None.

    The minimiser is a natural cubic spline: beyond the data it continues as a straight line (g'' = 0,
    Reinsch 1967), so outside the support interval f is extended linearly, f' held at its end value and
    f'' = 0, rather than continuing the end polynomial pieces.
    """

    name = "spline"
    max_order = 3

    def fit(self, x: Array, y: Array) -> SplineFit:
        from scipy.interpolate import make_smoothing_spline

        return SplineFit(make_smoothing_spline(x, y, lam=self.hparams.smoothing), float(x[0]), float(x[-1]))

    def values_of(self, state: SplineFit, q: Array) -> Array:
        inside = np.clip(q, state.low, state.high)
        return state.spline(inside) + state.spline(inside, nu=1) * (q - inside)

    def derivatives_of(self, state: SplineFit, q: Array, order: int) -> list[Array]:
        inside = np.clip(q, state.low, state.high)
        outside = inside != q
        out = [state.spline(inside, nu=1)]
        for k in range(2, order + 1):
            out.append(np.where(outside, 0.0, state.spline(inside, nu=k)))
        return out


class LocalPolynomial(ClassicalBaseline):
    """`local-poly`: at each query point q, the least-squares polynomial of degree `degree` through its
    `window` nearest support points (Savitzky & Golay 1964's moving least-squares fit, on irregular points:
    the fit is redone at every query point rather than tabulated as convolution weights). The polynomial is
    written in u = (x - q) / s, s the window's half-width, so its coefficients c_k give
    f^(k)(q) = k! c_k / s^k. Exact for polynomials of degree <= `degree` inside the support interval.

    Outside it a polynomial extrapolates wildly, so, as for the finite differences, the derivatives are
    held at their values at the nearest end point and the function continues along its tangent there.
    """

    name = "local-poly"

    @property
    def max_order(self) -> int:  # type: ignore[override]
        return self.hparams.degree

    def fit(self, x: Array, y: Array) -> PointEstimates:
        return PointEstimates(x, y, ())

    def coefficients(self, state: PointEstimates, q: Array) -> tuple[Array, Array]:
        """(c [Q, degree + 1] in powers of u, s [Q]) of the local fits at the query points."""
        window = min(self.hparams.effective_window, len(state.x))
        offsets = state.x[None, :] - q[:, None]
        nearest = np.argsort(np.abs(offsets), axis=1, kind="stable")[:, :window]
        local = np.take_along_axis(offsets, nearest, axis=1)
        scale = np.abs(local).max(axis=1)
        scale = np.where(scale > 0, scale, 1.0)
        # [Q, W, degree + 1]: powers of u for each query point's window.
        vander = np.polynomial.polynomial.polyvander(local / scale[:, None], self.hparams.degree)
        # One least-squares problem per query point; pinv (SVD) solves them all at once.
        coef = np.einsum("qcw,qw->qc", np.linalg.pinv(vander), state.y[nearest])
        return coef, scale

    def values_of(self, state: PointEstimates, q: Array) -> Array:
        inside = np.clip(q, state.x[0], state.x[-1])
        coef, scale = self.coefficients(state, inside)
        return coef[:, 0] + coef[:, 1] / scale * (q - inside)

    def derivatives_of(self, state: PointEstimates, q: Array, order: int) -> list[Array]:
        coef, scale = self.coefficients(state, np.clip(q, state.x[0], state.x[-1]))
        return [math.factorial(k) * coef[:, k] / scale**k for k in range(1, order + 1)]


class ScratchNet(FitsEachTask):
    """`scratch-net`: a fresh `suite.build_model()` per task, trained with full-batch Adam on the support
    MSE (the suite's loss) for `fit_steps` steps; its derivatives come from the harness's autograd path
    (`Predictor.derivatives`), so there is no `predict_derivatives`.

    Each task's network is initialised from a seed that is a function of the cell's seed (one draw from
    torch's global generator, which the harness seeds per cell, when the algorithm is built) and of the
    support set's bytes, inside `torch.random.fork_rng`: the same episode gets the same network whatever
    else ran before it (validation, the order of episodes), and the global generator is left untouched.
    Nothing is meta-learned: `meta_train_step` returns 0.0 at once.
    """

    name = "scratch-net"

    def __init__(self, hparams: Any, model: nn.Module, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.base_seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))

    def task_seed(self, support_x: torch.Tensor, support_y: torch.Tensor) -> int:
        """The initialisation seed of the network fitted to this support set."""
        digest = hashlib.sha256(self.base_seed.to_bytes(8, "little"))
        for t in (support_x, support_y):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[nn.Module]:
        """[the network fitted to this support set] * (steps + 1), its parameters frozen."""
        _as_points(support_x, support_y, self.name)  # the shape checks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.task_seed(support_x, support_y))
            net = self.suite.build_model().to(self.device)
        x, y = support_x.detach(), support_y.detach()
        # The fused kernel is a third faster on CPU for a net this small (measured: 160 vs 250 ms for 500
        # steps of a 1-40-40-1 MLP); it exists for CPU and CUDA tensors.
        fused = True if self.device.type in ("cpu", "cuda") else None
        optimiser = torch.optim.Adam(net.parameters(), lr=self.hparams.lr, fused=fused)
        with torch.enable_grad():
            for _ in range(self.hparams.fit_steps):
                optimiser.zero_grad(set_to_none=True)
                self.suite.loss(net(x), y).backward()
                optimiser.step()
        net.requires_grad_(False)
        return [net] * (steps + 1)

    def predict(self, state: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The fitted network at `x` (differentiable with respect to `x`)."""
        return state(x)
