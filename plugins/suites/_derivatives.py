"""The derivatives suite itself (the `derivatives` plugin registers it; imported when a cell builds it).

Every family is a function of (per-task parameters, x) written in torch operations and vectorised over
tasks: parameters are tensors with a leading task dimension, x is [tasks, points, 1] in float64. The
ground-truth derivatives are torch.autograd of that function with respect to x (create_graph for the
second), so a family is defined once; tests/plugins/test_derivatives.py checks them against the closed
forms (Black-Scholes delta and gamma, the oscillator's equation of motion and velocity, ...).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskBatch, TaskSuite
from harness.base import Predictor
from metaharness_plugins.backbones import activation

HIDDEN = 40  # Finn et al. 2017, section 5.1: a regressor with 2 hidden layers of 40 units
#: Floor of the variance that the normalised metric divides by. Every family's derivatives vary over the
#: interval by construction (a test checks that the smallest variance over 2,000 test tasks per family and
#: order is over 100 times the floor), so the floor only keeps a degenerate draw, or a custom subclass's
#: constant derivative, from dividing by zero.
VARIANCE_FLOOR = 1e-6
TARGET_NAMES = ("f'", "f''")
Params = dict[str, Tensor]


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def _sign(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1


def _horner(coefficients: Tensor, x: Tensor) -> Tensor:
    """sum_i coefficients[..., i] x^i, by Horner's rule (no x ** 0, whose autograd is NaN at x = 0)."""
    value = torch.zeros_like(x) + coefficients[..., -1:]
    for i in range(coefficients.shape[-1] - 2, -1, -1):
        value = value * x + coefficients[..., i:i + 1]
    return value


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


class Family:
    """A function family: `draw` per-task parameters, evaluate `self(params, x)` for x [T, N, 1]."""

    name: str = ""
    interval: tuple[float, float] = (-1.0, 1.0)
    #: What `describe` reports: each parameter's range (or choices), as drawn.
    ranges: dict[str, Any] = {}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        """Parameters of `n_tasks` functions, float64 (integer choices as int64), leading dim n_tasks."""
        raise NotImplementedError

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        """f(x) of every task: x [T, N, 1] -> [T, N, 1]; row n of task t depends on x[t, n] alone."""
        raise NotImplementedError


class Polynomial(Family):
    """Random polynomials of degree 3 to 5 (at least 3, so that neither f' nor f'' is constant: the
    normalised metric divides by their variance); the leading coefficient's magnitude is at least 0.5."""

    name, interval = "polynomial", (-1.0, 1.0)
    MAX_DEGREE, MIN_DEGREE = 5, 3
    ranges = {"degree": [MIN_DEGREE, MAX_DEGREE], "coefficients": [-1.0, 1.0],
              "leading_magnitude": [0.5, 1.0]}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        degree = torch.randint(self.MIN_DEGREE, self.MAX_DEGREE + 1, (n_tasks,), generator=generator)
        coefficients = _uniform((n_tasks, self.MAX_DEGREE + 1), -1.0, 1.0, generator)
        leading = _sign((n_tasks,), generator) * _uniform((n_tasks,), 0.5, 1.0, generator)
        powers = torch.arange(self.MAX_DEGREE + 1)
        coefficients = torch.where(powers == degree[:, None], leading[:, None], coefficients)
        coefficients = torch.where(powers > degree[:, None], torch.zeros(()), coefficients)
        return {"degree": degree, "coefficients": coefficients[:, None, :]}

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        return _horner(params["coefficients"], x)


class Sinusoids(Family):
    """Sums of 1 to 3 sinusoids A sin(w x + phi) (unused components have amplitude 0)."""

    name, interval = "sinusoids", (-5.0, 5.0)
    MAX_COMPONENTS = 3
    ranges = {"components": [1, MAX_COMPONENTS], "amplitude": [0.1, 2.0], "frequency": [0.5, 1.5],
              "phase": [0.0, 2 * math.pi]}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        shape = (n_tasks, 1, self.MAX_COMPONENTS)
        components = torch.randint(1, self.MAX_COMPONENTS + 1, (n_tasks,), generator=generator)
        amplitude = _uniform(shape, *self.ranges["amplitude"], generator)
        amplitude = amplitude * (torch.arange(self.MAX_COMPONENTS) < components[:, None, None])
        return {"components": components, "amplitude": amplitude,
                "frequency": _uniform(shape, *self.ranges["frequency"], generator),
                "phase": _uniform(shape, *self.ranges["phase"], generator)}

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        waves = params["amplitude"] * torch.sin(params["frequency"] * x + params["phase"])
        return waves.sum(dim=-1, keepdim=True)


#: The composition family's building blocks, each increasing on [-1, 1]; log1p takes 1 + u so that its
#: argument stays above -1 (log1p(1 + u) = log(2 + u)).
PRIMITIVES = ("exp", "tanh", "log1p", "sin")


#: The (h1, h2) pairs the composition family draws from: every ordered pair but exp after log1p and log1p
#: after exp, which nearly undo each other (with a concave p they drew functions whose f' was constant to
#: a few percent, which the normalised metric cannot score fairly).
PAIRS = torch.tensor([(i, j) for i in range(len(PRIMITIVES)) for j in range(len(PRIMITIVES))
                      if {PRIMITIVES[i], PRIMITIVES[j]} != {"exp", "log1p"}])


def _primitives(u: Tensor) -> Tensor:
    """Every primitive of u, stacked along a new last dimension (in PRIMITIVES order)."""
    return torch.stack([torch.exp(u), torch.tanh(u), torch.log1p(1.0 + u), torch.sin(u)], dim=-1)


def _primitive_ranges() -> tuple[Tensor, Tensor]:
    """(midpoint, half-width) of each primitive's image of [-1, 1]: (h - mid) / half maps it onto [-1, 1]."""
    ends = _primitives(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    return (ends[1] + ends[0]) / 2, (ends[1] - ends[0]) / 2


class Composition(Family):
    """s c h2((h1(p(x)) - m1) / r1): (h1, h2) drawn from PAIRS, c U[0.5, 2], s a random sign, and p a
    random monotone cubic that maps [-1, 1] onto [-1, 1]: p(x) = (d x + b2 (x^2 - 1) + b3 d x^3) / (1 + b3)
    with d = +-1, b2 U[-0.3, 0.3], b3 U[-0.1, 0.1] (so p' = (d + 2 b2 x + 3 b3 d x^2) / (1 + b3) >= 0.09).
    (m1, r1) map h1's image of [-1, 1] back onto [-1, 1]. Every stage thus sees the whole tame range
    [-1, 1] and is monotone there: |f'| <= 2 * 2.32 * 2.72 * 2.12 (c, exp rescaled, exp, max p') and
    the function is never nearly linear over the interval (the normalised metric divides by the
    variance of f')."""

    name, interval = "composition", (-1.0, 1.0)
    ranges = {"inner": "monotone cubic onto [-1, 1], b2 in [-0.3, 0.3], b3 in [-0.1, 0.1]",
              "primitives": list(PRIMITIVES),
              "pairs": [[PRIMITIVES[i], PRIMITIVES[j]] for i, j in PAIRS.tolist()],
              "scale": [0.5, 2.0], "sign": [-1, 1]}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        direction = _sign((n_tasks,), generator)
        b2 = _uniform((n_tasks,), -0.3, 0.3, generator)
        b3 = _uniform((n_tasks,), -0.1, 0.1, generator)
        inner = torch.stack([-b2, direction, b2, b3 * direction], dim=1) / (1 + b3)[:, None]
        outer = PAIRS[torch.randint(0, len(PAIRS), (n_tasks,), generator=generator)]
        scale = _sign((n_tasks, 1, 1), generator) * _uniform((n_tasks, 1, 1), 0.5, 2.0, generator)
        return {"inner": inner[:, None, :], "h1": outer[:, 0], "h2": outer[:, 1], "scale": scale}

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        middle, half = _primitive_ranges()

        def pick(u: Tensor, which: Tensor) -> Tensor:
            index = which.view(-1, *([1] * (u.dim() - 1)), 1).expand(*u.shape, 1)
            return torch.gather(_primitives(u), -1, index).squeeze(-1)

        h1 = params["h1"]
        u = (pick(_horner(params["inner"], x), h1) - middle[h1].view(-1, 1, 1)) / half[h1].view(-1, 1, 1)
        return params["scale"] * pick(u, params["h2"])


class BlackScholes(Family):
    """The Black-Scholes (1973) call price divided by the strike, as a function of moneyness x = S / K:
    f(x) = x N(d1) - exp(-rT) N(d2), d1 = (ln x + (r + sigma^2 / 2) T) / (sigma sqrt T),
    d2 = d1 - sigma sqrt T.
    By homogeneity f' is the delta dC/dS = N(d1) and f'' = K * gamma; the strike changes nothing else."""

    name, interval = "black-scholes", (0.5, 1.5)
    ranges = {"volatility": [0.1, 0.5], "rate": [0.0, 0.05], "maturity": [0.25, 2.0], "strike": [50.0, 150.0]}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        return {name: _uniform((n_tasks, 1, 1), low, high, generator)
                for name, (low, high) in self.ranges.items()}

    def __call__(self, params: Params, x: Tensor) -> Tensor:
        sigma, rate, maturity = params["volatility"], params["rate"], params["maturity"]
        spread = sigma * torch.sqrt(maturity)
        d1 = (torch.log(x) + (rate + sigma**2 / 2) * maturity) / spread
        return x * _normal_cdf(d1) - torch.exp(-rate * maturity) * _normal_cdf(d1 - spread)


class Oscillator(Family):
    """x(t) of m x'' + c x' + k x = F cos(w t), underdamped, in closed form: the steady state
    A cos(wt) + B sin(wt), A = F (k - m w^2) / D, B = F c w / D, D = (k - m w^2)^2 + (c w)^2, plus the
    transient exp(-gamma t) (C1 cos(wd t) + C2 sin(wd t)), gamma = c / 2m, wd = sqrt(k/m - gamma^2), with
    C1, C2 from x(0) and x'(0). Drawn as natural frequency, damping ratio (< 1), mass and the static
    deflection F / k, which bounds the resonant amplitude by deflection / (2 zeta) <= 5."""

    name, interval = "oscillator", (0.0, 4.0)
    ranges = {"natural_frequency": [0.5, 2.0], "damping_ratio": [0.1, 0.5], "mass": [0.5, 2.0],
              "static_deflection": [0.2, 1.0], "drive_frequency": [0.5, 2.0], "x0": [-1.0, 1.0],
              "v0": [-1.0, 1.0]}

    def draw(self, n_tasks: int, generator: torch.Generator) -> Params:
        p = {name: _uniform((n_tasks, 1, 1), low, high, generator)
             for name, (low, high) in self.ranges.items()}
        omega0, zeta, mass = p["natural_frequency"], p["damping_ratio"], p["mass"]
        stiffness = mass * omega0**2
        return {**p, "m": mass, "c": 2 * zeta * mass * omega0, "k": stiffness,
                "F": stiffness * p["static_deflection"], "w": p["drive_frequency"]}

    def __call__(self, params: Params, t: Tensor) -> Tensor:
        m, c, k, force, w = params["m"], params["c"], params["k"], params["F"], params["w"]
        detuning = k - m * w**2
        denominator = detuning**2 + (c * w) ** 2
        a, b = force * detuning / denominator, force * c * w / denominator
        gamma = c / (2 * m)
        damped = torch.sqrt(k / m - gamma**2)
        c1 = params["x0"] - a
        c2 = (params["v0"] - b * w + gamma * c1) / damped
        transient = torch.exp(-gamma * t) * (c1 * torch.cos(damped * t) + c2 * torch.sin(damped * t))
        return transient + a * torch.cos(w * t) + b * torch.sin(w * t)


#: The families by name, in the order of the plugin module's FAMILIES (a test checks that they agree; this
#: module may not import the plugin module).
FAMILY_CLASSES: dict[str, Family] = {
    f.name: f for f in (Polynomial(), Sinusoids(), Composition(), BlackScholes(), Oscillator())
}


def values_and_derivatives(family: Family, params: Params, x: Tensor, order: int) -> list[Tensor]:
    """[f, f', ..., f^(order)] of every task at x [T, N, 1] (float64), by autograd on the family's function.

    f is pointwise (row n depends on x[n] alone), so the gradient of the summed values is every point's
    own derivative; create_graph keeps the first derivative differentiable for the second."""
    with torch.enable_grad():
        point = x.detach().to(torch.float64).requires_grad_(True)
        value = family(params, point)
        out = [value]
        for _ in range(order):
            (value,) = torch.autograd.grad(value.sum(), point, create_graph=True)
            out.append(value)
    return [v.detach() for v in out]


class DerivativesSuite(TaskSuite):
    """Few-shot function approximation scored on derivatives (lower is better); see the plugin docstring."""

    higher_is_better = False

    def __init__(self, config: Any) -> None:
        """`config`: a `DerivativesConfig` (the `derivatives` plugin's)."""
        super().__init__(config)
        self.family = FAMILY_CLASSES[config.family]
        normalized = config.metric == "normalized"
        self.metric_name = "normalized_derivative_mse" if normalized else "derivative_mse"
        targets = ",".join(TARGET_NAMES[: config.order])
        self.metric_label = f"{targets} normalised MSE" if normalized else f"{targets} MSE"

    @property
    def order(self) -> int:
        """How many derivatives are scored (1: f'; 2: f' and f'')."""
        return int(self.config.order)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes, float32 on the CPU: support [T, K, 1] pairs (x, f(x) + noise); query_y is
        f at "train" ([T, Q, 1]) and the derivatives f' (, f'') at "val" and "test" ([T, Q, order])."""
        n_support, n_query = self.config.sizes(split)
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        # A fixed draw order (parameters, support x, query x, then noise) makes an episode a pure function
        # of the generator's state and the sizes, and a noise level changes nothing but the noise.
        params = self.family.draw(n_tasks, generator)
        low, high = self.family.interval
        support_x = _uniform((n_tasks, n_support, 1), low, high, generator)
        query_x = _uniform((n_tasks, n_query, 1), low, high, generator)
        with torch.no_grad():
            support_y = self.family(params, support_x)
        if self.config.noise > 0:
            support_y = support_y + self.config.noise * torch.randn(support_y.shape, generator=generator,
                                                                    dtype=torch.float64)
        if split == "train":
            with torch.no_grad():
                query_y = self.family(params, query_x)
        else:
            query_y = torch.cat(values_and_derivatives(self.family, params, query_x, self.order)[1:], dim=-1)
        return TaskBatch(support_x=support_x.float(), support_y=support_y.float(), query_x=query_x.float(),
                         query_y=query_y.float())

    def build_model(self) -> nn.Module:
        """The MAML paper's 1-40-40-1 regressor with a smooth non-linearity (tanh by default), so that the
        adapted network's derivatives with respect to its input mean something."""
        name = self.config.activation
        return nn.Sequential(nn.Linear(1, HIDDEN), activation(name),
                             nn.Linear(HIDDEN, HIDDEN), activation(name),
                             nn.Linear(HIDDEN, 1))

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Mean squared error on function values (what inner loops and meta-training fit)."""
        return F.mse_loss(prediction, target)

    def metric(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The derivative error of predicted derivatives `prediction` against `target`, both [..., Q, order]:
        per order the MSE over the Q points (divided by the target's variance over them with "normalized",
        floored at VARIANCE_FLOOR), averaged over orders and any leading (task) dimensions."""
        if prediction.shape != target.shape:
            raise ValueError(f"derivative predictions shaped {tuple(prediction.shape)} do not match the "
                             f"targets {tuple(target.shape)} ([..., query points, order={self.order}])")
        error = ((prediction - target) ** 2).mean(dim=-2)
        if self.config.metric == "normalized":
            error = error / target.var(dim=-2, correction=0).clamp_min(VARIANCE_FLOOR)
        return error.mean()

    def score(self, predictor: Predictor, query_x: Tensor, query_y: Tensor) -> Tensor:
        """The metric of the adapted learner's derivatives at the query points (one episode):
        `predictor.derivatives` differentiates it with respect to its input, or asks the learner."""
        derivatives = predictor.derivatives(query_x, self.order)
        with torch.no_grad():
            prediction = torch.cat([d.reshape(-1, 1) for d in derivatives], dim=-1).to(query_y)
            return self.metric(prediction, query_y)

    def describe(self) -> dict[str, Any]:
        targets = ", ".join(TARGET_NAMES[: self.order])
        how = ("MSE divided by the variance of the true derivative over each task's query points (1 = no "
               "better than the right constant)" if self.config.metric == "normalized" else "plain MSE")
        return {
            "family": self.family.name,
            "interval": list(self.family.interval),
            "parameter_ranges": self.family.ranges,
            "order": self.order,
            "targets": list(TARGET_NAMES[: self.order]),
            "metric": self.config.metric,
            "activation": self.config.activation,
            "noise": self.config.noise,
            "test_shots": self.config.effective_test_shots,
            "leaderboard_note": (f"derivatives suite: the score is the error of the adapted learner's "
                                 f"{targets} (with respect to its input) at the query points, {how}."),
        }
