"""Few-shot linear regression, the worked example of the "everything is a mapping" view of meta-learning:
a task is y = w^T x + b in d dimensions, observed at K noisy support points, and a meta-learner is a map
from the support set to a predictor. Its ideal is known in closed form: least squares on the support set
(Gauss 1809; Legendre 1805) and, for Gaussian weights, ridge regression (Hoerl & Kennard 1970), which is
then the Bayes posterior mean. The `least-squares` and `ridge` algorithms are those rows.

Each task draws w ~ N(0, weight_scale^2 I_d) and b ~ N(0, bias_scale^2); inputs are uniform on
[-input_scale, input_scale]^d or normal N(0, input_scale^2 I_d); support targets carry Gaussian noise of
standard deviation `noise`, query targets are noise-free (so the MSE measures the error of the learned
function itself, as the derivatives suite scores it). The episode template (K support, query points per
task, K at meta-test apart) is that of Finn, Abbeel & Levine 2017 (MAML, section 5.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.regression import EpisodeSizes, check_sizes

INPUTS = ("uniform", "normal")
MODELS = ("mlp", "linear")
MAX_DIM = 10_000  # input dimensions: far past any few-shot study, short of exhausting memory
MAX_WIDTH = 100_000  # units in one hidden layer


def _check_scale(name: str, value: object, positive: bool) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0 or (positive and value == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {need}, got {value!r}")


@dataclass(frozen=True)
class LinearRegressionConfig(EpisodeSizes):
    """dim: d, the input dimension.
    shots: K support points per task at meta-train and validation; test_shots: K at meta-test (None =
        `shots`). With K < d + 1 least squares is underdetermined (it returns the minimum-norm fit).
    query, test_query: query points per task (validation / test), where the MSE is measured.
    noise: standard deviation of the Gaussian noise on the support targets (never on the query's).
    weight_scale: w ~ N(0, weight_scale^2 I_d); bias_scale: b ~ N(0, bias_scale^2) (0: no bias).
    inputs: "uniform" (x ~ U[-input_scale, input_scale]^d) or "normal" (x ~ N(0, input_scale^2 I_d)).
    model: the base learner gradient-based algorithms adapt: "mlp" (ReLU MLP d-hidden...-1) or "linear"
        (one nn.Linear(d, 1): the model class of the tasks, so MAML on it can become exact).
    hidden: the MLP's hidden layer sizes (ignored by "linear").
    """

    dim: int = 1
    shots: int = 10
    test_shots: int | None = None
    query: int = 10
    test_query: int = 100
    noise: float = 0.1
    weight_scale: float = 1.0
    bias_scale: float = 1.0
    inputs: str = "uniform"
    input_scale: float = 1.0
    model: str = "mlp"
    hidden: tuple[int, ...] = (40, 40)

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"dim must be an integer from 1 to {MAX_DIM:,} (the input dimension d), "
                             f"got {self.dim!r}")
        check_sizes(self)
        _check_scale("noise", self.noise, positive=False)
        _check_scale("weight_scale", self.weight_scale, positive=False)
        _check_scale("bias_scale", self.bias_scale, positive=False)
        _check_scale("input_scale", self.input_scale, positive=True)
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not isinstance(self.hidden, (tuple, list)):
            raise ValueError(f"hidden must be a list of hidden layer sizes, e.g. [40, 40], "
                             f"got {self.hidden!r}")
        if any(not isinstance(h, int) or isinstance(h, bool) or not 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden must list layer sizes from 1 to {MAX_WIDTH:,}, "
                             f"got {list(self.hidden)!r}")
        if self.model == "mlp" and not self.hidden:
            raise ValueError("hidden is empty: an MLP needs at least one hidden layer; for the linear "
                             "model set model = \"linear\"")

    @property
    def bayes_lambda(self) -> float | None:
        """The ridge penalty whose fit is the Bayes posterior mean of (w, b) under this suite's prior,
        sigma^2 / s^2, when weights and bias share the scale s > 0 (and the bias is penalised); else None."""
        if self.weight_scale == self.bias_scale and self.weight_scale > 0:
            return self.noise**2 / self.weight_scale**2
        return None


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="linear-regression",
            factory="metaharness_plugins.suites._linear_regression:LinearRegressionSuite",
            config=LinearRegressionConfig,
            task_kind="regression",
            description="K-shot linear regression y = w^T x + b in d dimensions (w, b Gaussian, noisy "
                        "support); MSE; least squares and ridge are its closed-form oracles",
            paper="the mapping view of meta-learning's worked example; Hoerl & Kennard 1970, Ridge "
                  "Regression (Technometrics 12); episodes after Finn, Abbeel & Levine 2017, MAML (ICML)",
            # The base learner does not change which episodes are drawn.
            episode_neutral=("model", "hidden"),
        )
    ]


# The implementation lives in _linear_regression.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._linear_regression")
