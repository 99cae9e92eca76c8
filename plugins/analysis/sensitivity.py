"""Sensitivity of adapted learners: their local Lipschitz constant on the query inputs and their task
metric under Gaussian input noise, measured on every test episode (the `lipschitz` and `noise-robustness`
measurements a grid enables with `measurements = [...]`).

`lipschitz`: per query point x_i the spectral norm of the adapted model's input Jacobian,
||d f(x_i) / d x_i||_2 (the gradient norm for a scalar output). Its supremum over the input space is the
model's Lipschitz constant (in L2) for a differentiable f, so its mean and maximum over the query points
are local, lower estimates of it (Wood & Zhang 1996, "Estimation of the Lipschitz constant of a
function", J. Global Optimization). Beside them, the upper bound of Szegedy et al. 2014 ("Intriguing
properties of neural networks", ICLR, section 4.3) and Virmaux & Scaman 2018 ("Lipschitz regularity of
deep neural networks: analysis and efficient estimation", NeurIPS: AutoLip): the product over layers of
each layer's operator norm, for a model that is a chain of linear maps and Lipschitz activations.

`noise-robustness`: the suite's own score of the adapted learner on the query set with Gaussian noise of
standard deviation sigma added to every input, one column per sigma: a robustness curve in the sense of
Ford, Gilmer, Carlini & Cubuk 2019 ("Adversarial examples are a natural consequence of test error in
noise", ICML). The noise is drawn from the generator the harness seeds per (test seed, episode), so every
algorithm of a grid is scored on the same noisy inputs; sigma = 0 is the clean metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import MeasurementSpec, forward_attributes, hookimpl

MAX_SIGMAS = 100
MAX_POWER_ITERATIONS = 100_000
MAX_SAMPLES = 10_000


@dataclass(frozen=True)
class LipschitzOptions:
    """bound: also compute the product of the layers' operator norms (where the model is a chain of
        Linear / convolution layers and Lipschitz activations evaluated with the adapted state; otherwise
        the column is left out of that episode).
    power_iterations: the most power-iteration steps per convolution (a Linear layer's norm is exact,
        `torch.linalg.matrix_norm(ord=2)`); iteration stops earlier once the estimate changes by less than
        1e-9 of itself.
    """

    bound: bool = True
    power_iterations: int = 200

    def __post_init__(self) -> None:
        steps = self.power_iterations
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_POWER_ITERATIONS:
            raise ValueError(f"power_iterations must be an integer from 1 to {MAX_POWER_ITERATIONS:,}, "
                             f"got {self.power_iterations!r}")


@dataclass(frozen=True)
class NoiseOptions:
    """sigmas: standard deviations of the Gaussian noise added to the query inputs, one column each (0 is
        the clean metric); distinct, finite, >= 0.
    samples: noise draws per episode and sigma whose scores are averaged (one draw of noise is scaled to
        every sigma, so the curve's points share their noise direction).
    """

    sigmas: tuple[float, ...] = (0.01, 0.1)
    samples: int = 1

    def __post_init__(self) -> None:
        sigmas = self.sigmas
        if (not isinstance(sigmas, (list, tuple)) or not 1 <= len(sigmas) <= MAX_SIGMAS
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                           and s >= 0 for s in sigmas)):
            raise ValueError(f"sigmas must be a list of 1 to {MAX_SIGMAS} finite noise levels >= 0, e.g. "
                             f"[0.01, 0.1], got {sigmas!r}")
        names = [self.sigma_name(float(s)) for s in sigmas]
        if len(set(names)) != len(names):
            raise ValueError(f"sigmas must be distinct (to 6 significant digits: each names a column), "
                             f"got {sigmas!r}")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in sigmas))
        samples = self.samples
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be an integer from 1 to {MAX_SAMPLES:,}, got {self.samples!r}")

    @staticmethod
    def sigma_name(sigma: float) -> str:
        """How a noise level appears in a column name, noise_<sigma>_metric: 0.1, 1e-05, 2."""
        return f"{sigma:g}"


FUNCTIONS = frozenset({"regression", "classification"})  # learners that map inputs to outputs


@hookimpl
def harness_register_measurements() -> list[MeasurementSpec]:
    return [
        MeasurementSpec(
            name="lipschitz",
            factory="metaharness_plugins.analysis._sensitivity:Lipschitz",
            options=LipschitzOptions,
            description="local Lipschitz constant of the adapted model on the query inputs (input-Jacobian "
                        "spectral norm: mean, max) and the product of layer operator norms (an upper bound)",
            task_kinds=FUNCTIONS,
        ),
        MeasurementSpec(
            name="noise-robustness",
            factory="metaharness_plugins.analysis._sensitivity:NoiseRobustness",
            options=NoiseOptions,
            description="the task metric with Gaussian noise of each given sigma on the query inputs",
            task_kinds=FUNCTIONS,
        ),
    ]


# The implementation lives in _sensitivity.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.analysis._sensitivity")
