"""The closed-form baselines themselves (the `closed_form` plugin registers them; imported when a cell builds
one). Least squares and ridge on each task's support set, in float64; sources are named in closed_form.py."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness import Algorithm, TaskBatch

#: 1 - H_ii below this means point i alone determines its fit: its leave-one-out residual is undefined.
LEVERAGE_EPS = 1e-10


@dataclass(frozen=True)
class LinearFit:
    """A fitted task: coefficients [d (+1 for the bias), outputs] in float64, and the targets' layout."""

    coef: torch.Tensor
    bias: bool
    vector_targets: bool  # support_y was [K] rather than [K, outputs]


def design(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """The float64 design matrix [points, d (+1)]: the inputs and, with `bias`, a column of ones."""
    x = x.to(torch.float64)
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1) if bias else x


def targets(support_x: torch.Tensor, support_y: torch.Tensor, name: str) -> torch.Tensor:
    """support_y as float64 [K, outputs]; a ValueError unless the inputs are vectors [K, d] with one target
    row per point."""
    if support_x.dim() != 2:
        raise ValueError(f"{name} fits a linear function of vector inputs: support_x must be shaped [K, d], "
                         f"got {tuple(support_x.shape)}")
    if support_y.dim() not in (1, 2) or support_y.shape[0] != support_x.shape[0]:
        raise ValueError(f"{name} needs one target (row) per support point: support_y must be [K] or "
                         f"[K, outputs] with K = {support_x.shape[0]}, got {tuple(support_y.shape)}")
    if not support_y.is_floating_point():
        raise ValueError(f"{name} regresses real-valued targets; support_y has dtype {support_y.dtype}")
    y = support_y.to(torch.float64)
    return y[:, None] if y.dim() == 1 else y


def least_squares(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmin ||a c - y||^2, the minimum-norm one when it is not unique (SVD driver on the CPU; elsewhere
    the pseudo-inverse, which is the same solution)."""
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, y, driver="gelsd").solution
    return torch.linalg.pinv(a) @ y


class ClosedForm(Algorithm):
    """A linear fit of each task's support set: nothing is meta-learned, so `meta_parameters` is empty,
    `meta_train_step` returns 0.0 and the runner skips meta-training; `adapt` returns the one fit, repeated
    when the harness asks for more steps (`test_steps` is 0)."""

    #: The runner skips meta-training and validation: straight to the test episodes.
    meta_trains = False
    name = ""

    def __init__(self, hparams: Any, model: nn.Module, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        # The grid checks every pair before any cell runs (closed_form.check, the same rule); this is the
        # second line of defence for an algorithm built some other way (a test, a script).
        reason = hparams.impossible("", getattr(suite, "config", None))
        if reason:
            raise ValueError(reason)

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        """None: nothing is learned across tasks."""
        return {}

    def meta_train_step(self, batch: TaskBatch) -> float:
        """Nothing to meta-train: returns 0.0 without touching the batch."""
        return 0.0

    def fit(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Coefficients [columns of a, outputs] for the design `a` and targets `y` (float64)."""
        raise NotImplementedError

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[LinearFit]:
        """[the fit to this support set] * (steps + 1)."""
        y = targets(support_x, support_y, self.name)
        state = LinearFit(self.fit(design(support_x.detach(), self.hparams.bias), y.detach()),
                          self.hparams.bias, support_y.dim() == 1)
        return [state] * (steps + 1)

    def predict(self, state: LinearFit, x: torch.Tensor) -> torch.Tensor:
        """The fitted function at `x` ([Q, d]) in x's dtype, [Q, outputs] (or [Q] for vector targets);
        differentiable with respect to `x`."""
        if x.dim() != 2 or x.shape[1] + int(state.bias) != state.coef.shape[0]:
            raise ValueError(f"{self.name} was fitted on {state.coef.shape[0] - int(state.bias)}-dimensional "
                             f"inputs; x must be shaped [Q, that], got {tuple(x.shape)}")
        out = (design(x, state.bias) @ state.coef).to(x.dtype)
        return out[:, 0] if state.vector_targets else out


class LeastSquares(ClosedForm):
    """`least-squares`: the (minimum-norm) least-squares fit."""

    name = "least-squares"

    def fit(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return least_squares(a, y)


class Ridge(ClosedForm):
    """`ridge`: the penalised fit, its penalty fixed or chosen per task by leave-one-out."""

    name = "ridge"

    def __init__(self, hparams: Any, model: nn.Module, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.choices: list[float] = []

    def penalty(self, columns: int) -> torch.Tensor:
        """The diagonal of the penalty matrix: 1 on every weight, on the bias only if `penalise_bias`."""
        diag = torch.ones(columns, dtype=torch.float64, device=self.device)
        if self.hparams.bias and not self.hparams.penalise_bias:
            diag[-1] = 0.0
        return diag

    def solve(self, a: torch.Tensor, y: torch.Tensor, lams: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(coefficients [G, columns, outputs], hat-matrix diagonals [G, K]) for each penalty of `lams`
        [G]."""
        gram = a.T @ a
        system = gram + lams[:, None, None] * torch.diag(self.penalty(a.shape[1]))
        # M^-1 [A^T y, A^T]: the coefficients and the hat matrix H = A M^-1 A^T from one factorisation.
        rhs = torch.cat([a.T @ y, a.T], dim=1).expand(len(lams), -1, -1)
        solved = torch.linalg.solve(system, rhs)
        coef, inverse_at = solved[..., : y.shape[1]], solved[..., y.shape[1]:]
        hat_diag = torch.einsum("kc,gck->gk", a, inverse_at)
        return coef, hat_diag

    def fit(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lam = self.hparams.lam
        if lam is not None:
            if lam == 0:  # the limit lam -> 0 of ridge is the minimum-norm least-squares fit
                return least_squares(a, y)
            return self.solve(a, y, torch.tensor([float(lam)], dtype=torch.float64, device=a.device))[0][0]
        return self.leave_one_out(a, y)

    def leave_one_out(self, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The fit whose penalty (from `lam_grid`) has the lowest exact leave-one-out error on the support
        set: mean over points of ((y_i - f(x_i)) / (1 - H_ii))^2 (Allen 1974). A penalty of 0 is scored by
        its limit (the pseudo-inverse's hat matrix); ties go to the smaller penalty, a grid with no finite
        score to the largest."""
        grid = sorted(float(v) for v in self.hparams.lam_grid)
        positive = [v for v in grid if v > 0]
        coefs, scores = [], []
        if positive:
            coef, hat = self.solve(a, y, torch.tensor(positive, dtype=torch.float64, device=a.device))
            coefs += list(coef)
            scores += self.loo_scores(a, y, coef, hat)
        if grid[0] == 0:
            coef = least_squares(a, y)
            hat = torch.einsum("kc,ck->k", a, torch.linalg.pinv(a))
            coefs.insert(0, coef)
            scores.insert(0, self.loo_scores(a, y, coef[None], hat[None])[0])
        finite = [i for i, s in enumerate(scores) if s < float("inf")]
        best = min(finite, key=lambda i: (scores[i], i)) if finite else len(grid) - 1
        self.choices.append(grid[best])
        return coefs[best]

    @staticmethod
    def loo_scores(a: torch.Tensor, y: torch.Tensor, coef: torch.Tensor, hat: torch.Tensor) -> list[float]:
        """The leave-one-out mean squared error of each fit (inf where a point has leverage 1)."""
        residual = y[None] - a[None] @ coef  # [G, K, outputs]
        free = 1.0 - hat  # [G, K]
        loo = residual / free.clamp_min(LEVERAGE_EPS)[..., None]
        scores = (loo**2).mean(dim=(1, 2))
        scores = torch.where((free < LEVERAGE_EPS).any(dim=1), torch.inf, scores)
        return [float(s) for s in scores]

    def describe(self) -> dict[str, Any]:
        """With lam chosen by leave-one-out: "chosen" {"lam": the median choice over the episodes adapted
        so far (the test episodes)} and the range of the choices."""
        if self.hparams.lam is not None or not self.choices:
            return {}
        return {"chosen": {"lam": float(statistics.median(self.choices))},
                "lam_choices": {"median": float(statistics.median(self.choices)), "min": min(self.choices),
                                "max": max(self.choices), "episodes": len(self.choices)}}
