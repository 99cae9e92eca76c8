"""Few-shot differentiation: adapt to a new function from K samples, then score its derivatives.

The idea is meta-learning for automatic differentiation of functions known only from samples:
meta-train on many function-approximation tasks of a family, adapt fast to a new function from a few
(possibly noisy) samples, then differentiate the adapted function with respect to its input (uses:
sensitivities in optimisation, velocities and accelerations in physics simulation, the Greeks of a
financial model such as an option price). The episode template is the sinusoid regression of Finn,
Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML,
section 5.1 (K support points, a 1-40-40-1 MLP); the query asks for f' (and f'' with `order = 2`).

Families (`family`), each drawn per task from the generator the harness passes:

- "polynomial": degree 3 to 5 on x in [-1, 1], coefficients U[-1, 1], leading one of magnitude U[0.5, 1].
- "sinusoids": a sum of 1 to 3 sinusoids on x in [-5, 5] (amplitude U[0.1, 2], angular frequency
  U[0.5, 1.5], phase U[0, 2 pi]).
- "composition": +-c * h2((h1(p(x)) - m1) / r1) on x in [-1, 1]: p a random monotone cubic mapping [-1, 1]
  onto itself, h1 and h2 drawn from exp, tanh, log1p(1 + u) and sin (never exp with log1p, which nearly
  undo each other), (m1, r1) mapping h1's image back onto [-1, 1], c U[0.5, 2].
- "black-scholes": the Black & Scholes (1973) price C(S) of a European call, "The Pricing of Options
  and Corporate Liabilities", J. Political Economy 81(3), in moneyness x = S / K in [0.5, 1.5], with
  f = C / K. The price is homogeneous of degree one in (S, K), so f(x) = C(xK, K) / K does not depend on
  the strike K, df/dx = dC/dS is exactly the delta N(d1) and d2f/dx2 = K * gamma = phi(d1) / (x sigma
  sqrt(T)). Volatility U[0.1, 0.5], rate U[0, 0.05], maturity U[0.25, 2] years (strike U[50, 150],
  drawn for the record: it changes nothing in the scaled task).
- "oscillator": the closed-form trajectory x(t), t in [0, 4], of a damped driven harmonic oscillator
  m x'' + c x' + k x = F cos(w t) (underdamped: natural frequency U[0.5, 2], damping ratio U[0.1, 0.5],
  mass U[0.5, 2], static deflection F / k U[0.2, 1], drive frequency U[0.5, 2], x(0) and x'(0) U[-1, 1]);
  the targets are the velocity x' and the acceleration x''.

Episodes (`TaskBatch`): support_x, support_y [T, K, 1] hold K points and f there (plus Gaussian noise of
std `noise`, on the support only). At split "train" query_x, query_y [T, Q, 1] hold f (noiseless) at Q
new points, so every regression meta-learner (MAML, first-order MAML, Meta-SGD, Reptile, pretraining)
meta-trains unchanged as a function approximator. At "val" and "test" query_y is [T, Q, order]: column 0
is f', column 1 is f'' (order 2). Ground truth is torch.autograd on the true function in float64.

Scoring (`TaskSuite.score`): the adapted learner's derivatives with respect to its input (autograd on
the adapted network, or the learner's own `predict_derivatives`), MSE per order averaged over orders;
with `metric = "normalized"` each order's MSE is divided by the variance of the true derivative over
the task's query points, so families and scales compare (1.0 = no better than the right constant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.regression import EpisodeSizes, check_activation, check_sizes

FAMILIES = ("polynomial", "sinusoids", "composition", "black-scholes", "oscillator")
METRICS = ("normalized", "mse")
ORDERS = (1, 2)


@dataclass(frozen=True)
class DerivativesConfig(EpisodeSizes):
    """family: which function family tasks come from (see the module docstring).
    shots: K support points per task at meta-train and validation; test_shots: K at meta-test (None =
        `shots`). Finite-difference baselines need K >= 2 (K >= 3 for order 2): they check that.
    query, test_query: query points per task (validation / test), where derivatives are scored.
    order: 1 scores f'; 2 scores f' and f'' (averaged).
    noise: standard deviation of Gaussian noise added to the support values (never to the query).
    metric: "normalized" (per task, MSE / variance of the true derivative over the query points) or
        "mse" (plain derivative MSE).
    activation: the 1-40-40-1 MLP's non-linearity; "relu" has a zero second derivative, so order 2
        with it is rejected.
    """

    family: str = "sinusoids"
    shots: int = 10
    test_shots: int | None = None
    query: int = 10
    test_query: int = 100
    order: int = 1
    noise: float = 0.0
    metric: str = "normalized"
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        check_activation(self.activation)
        if self.order not in ORDERS or isinstance(self.order, bool):
            raise ValueError(f"order must be 1 (f') or 2 (f' and f''), got {self.order!r}")
        if self.order == 2 and self.activation == "relu":
            raise ValueError("activation='relu' cannot be scored with order=2: a ReLU network's second "
                             "derivative is zero almost everywhere; use activation='tanh' or 'softplus'")
        # The normalised metric divides by the variance of the true derivative over the query points,
        # which one point does not have.
        if self.metric == "normalized":
            low, need = 2, "the normalized metric needs a variance over >= 2 points"
        else:
            low, need = 1, "at least one query point per task"
        check_sizes(self, low, need)
        number = isinstance(self.noise, (int, float)) and not isinstance(self.noise, bool)
        if not number or not math.isfinite(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be a finite standard deviation >= 0, got {self.noise!r}")


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="derivatives",
            factory="metaharness_plugins.suites._derivatives:DerivativesSuite",
            config=DerivativesConfig,
            task_kind="regression",
            description="adapt to a function from K samples, score its derivatives f' (f'') at query points "
                        "(polynomial, sinusoids, composition, Black-Scholes delta/gamma, oscillator)",
            paper="Finn, Abbeel & Levine 2017, MAML (ICML), section 5.1 episode template; Black & Scholes "
                  "1973 (J. Political Economy) for the option-pricing family",
            # Neither the scoring nor the model changes which episodes are drawn.
            episode_neutral=("metric", "activation"),
        )
    ]


# The implementation lives in _derivatives.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._derivatives")
