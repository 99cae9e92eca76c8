"""Closed-form linear baselines: least squares and ridge regression fitted to each task's support set, with
nothing meta-learned, as rows of the same leaderboards as the meta-learners.

- `least-squares`: the ordinary least-squares fit of y = W^T x + b on the support set (Legendre 1805;
  Gauss 1809), by `torch.linalg.lstsq` with the SVD driver, so an underdetermined task (K < d + 1) gets
  the minimum-norm solution (the Moore-Penrose pseudo-inverse, Penrose 1955).
- `ridge`: the Tikhonov-regularised fit (Hoerl & Kennard 1970, "Ridge Regression: Biased Estimation for
  Nonorthogonal Problems", Technometrics 12), minimising ||y - X w - b||^2 + lam ||w||^2 by
  `torch.linalg.solve` of the normal equations; the bias is not penalised unless `penalise_bias`.
  With `lam` None the penalty is chosen per task among `lam_grid` by exact leave-one-out
  cross-validation on the support set, the residuals e_i / (1 - H_ii) of the hat matrix H (Allen 1974,
  "The Relationship between Variable Selection and Data Augmentation and a Method for Prediction",
  Technometrics 16); describe()["chosen"] reports the median choice over the test episodes.

On the `linear-regression` suite these are the oracle a mapping learner should approach: with w, b ~
N(0, s^2) and support noise sigma, ridge with lam = sigma^2 / s^2 and the bias penalised is the Bayes
posterior mean, the lowest expected query MSE any learner can reach. They are regression learners on any
regression suite whose inputs are vectors: on sinusoid they fit the best straight line to K points of a
sine wave, a poor fit (documented as such: a floor, not a competitor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness import AlgorithmSpec, forward_attributes, hookimpl

#: The default candidates of leave-one-out: 10^-4 to 10^3 in half-decades (15 values).
LAM_GRID = tuple(round(10.0 ** (k / 2), 12) for k in range(-8, 7))
MAX_GRID = 1000  # candidates of one leave-one-out search


def support_sizes(suite_config: Any) -> list[int]:
    """The support-set sizes a suite configuration gives (`shots`, and `test_shots` when set); empty when
    the suite has no `shots`."""
    sizes = []
    for name in ("shots", "test_shots"):
        value = getattr(suite_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            sizes.append(value)
    return sizes


@dataclass(frozen=True)
class LeastSquaresHparams:
    """bias: fit an intercept b beside the weights (an extra column of ones)."""

    bias: bool = True

    def impossible(self, suite_name: str, suite_config: Any) -> str:
        """Least squares fits any K >= 1 (underdetermined: the minimum-norm solution)."""
        return ""


@dataclass(frozen=True)
class RidgeHparams:
    """lam: the penalty lam >= 0 on ||w||^2; None (the default) chooses it per task by leave-one-out
        cross-validation on the support set among `lam_grid`.
    lam_grid: the candidates of leave-one-out (each >= 0; 10^-4 ... 10^3 in half-decades).
    bias: fit an intercept b beside the weights.
    penalise_bias: include b in the penalty (what the Bayes posterior mean does when b has a Gaussian
        prior of the weights' scale); by default the intercept is left free, as in Hoerl & Kennard.
    """

    lam: float | None = None
    lam_grid: tuple[float, ...] = LAM_GRID
    bias: bool = True
    penalise_bias: bool = False

    def __post_init__(self) -> None:
        if self.lam is not None and not self.lam >= 0:
            raise ValueError(f"lam must be None (chosen by leave-one-out) or a penalty >= 0, "
                             f"got {self.lam!r}")
        grid = self.lam_grid
        if not isinstance(grid, (tuple, list)) or not 1 <= len(grid) <= MAX_GRID:
            raise ValueError(f"lam_grid must be a list of 1 to {MAX_GRID} penalties >= 0, got {grid!r}")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in grid):
            raise ValueError(f"lam_grid must hold penalties >= 0, got {list(grid)!r}")
        if self.penalise_bias and not self.bias:
            raise ValueError("penalise_bias=true needs bias=true (there is no intercept to penalise)")

    def impossible(self, suite_name: str, suite_config: Any) -> str:
        """Leave-one-out needs two support points (one left out, at least one to fit)."""
        if self.lam is not None:
            return ""
        where = f"suite {suite_name!r}" if suite_name else "the suite"
        for k in support_sizes(suite_config):
            if k < 2:
                return (f"ridge with lam = None chooses lam by leave-one-out, which needs at least 2 support "
                        f"points; {where} gives K = {k} (set lam to a number)")
        return ""


def check(hparams: Any, suite_name: str, suite_config: Any) -> str:
    """The `AlgorithmSpec.check` of both baselines: "" when they can run on the suite configuration."""
    return hparams.impossible(suite_name, suite_config)


PAPERS = {
    "least-squares": "Legendre 1805 / Gauss 1809, the method of least squares; Penrose 1955, A Generalized "
                     "Inverse for Matrices (minimum-norm solutions)",
    "ridge": "Hoerl & Kennard 1970, Ridge Regression (Technometrics 12); Allen 1974, PRESS leave-one-out "
             "(Technometrics 16)",
}


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    impl = "metaharness_plugins.algorithms._closed_form"
    regression = frozenset({"regression"})
    return [
        AlgorithmSpec(name="least-squares", factory=f"{impl}:LeastSquares", hparams=LeastSquaresHparams,
                      task_kinds=regression, paper=PAPERS["least-squares"], check=check,
                      description="ordinary least squares y = W^T x + b on each task's support set "
                                  "(minimum-norm when underdetermined); nothing meta-learned"),
        AlgorithmSpec(name="ridge", factory=f"{impl}:Ridge", hparams=RidgeHparams,
                      task_kinds=regression, paper=PAPERS["ridge"], check=check,
                      description="ridge regression on each task's support set, lam fixed or chosen by "
                                  "leave-one-out; nothing meta-learned"),
    ]


# The implementations live in _closed_form.py, imported by the first cell that needs them.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._closed_form")
