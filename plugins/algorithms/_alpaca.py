"""ALPaCA itself (the `alpaca` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskBatch, TaskSuite
from harness.functional import GradientAlgorithm
from metaharness_plugins import backbones


def _precision_cholesky(phi: Tensor, prior: Tensor) -> Tensor:
    """The Cholesky factor of Lambda_n = Phi^T Phi + Lambda0 [..., n, n]. Lambda_n is positive definite, but
    in float32 a large Phi^T Phi over a small prior rounds to an indefinite matrix (meta-learning rates of
    0.003 and above reached it on the derivatives suite): those are formed and factorised again in float64.
    Where float32 factorises, its factor is kept exactly."""
    factor, info = torch.linalg.cholesky_ex(phi.mT @ phi + prior)
    if phi.dtype != torch.float64 and bool((info != 0).any()):
        wide = phi.double()
        factor = torch.linalg.cholesky(wide.mT @ wide + prior.double()).to(phi.dtype)
    return factor


class ALPaCANet(nn.Module):
    """Features phi and the prior MN(K0, Lambda0^-1, Sigma) over the last layer, batched over any leading
    dimensions: context [..., k, x_dim] and [..., k, y_dim], targets [..., m, x_dim]."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int, layers: int, features: int,
                 activation: str) -> None:
        super().__init__()
        self.features = backbones.mlp(x_dim, [hidden] * layers + [features], activation)
        self.prior_mean = nn.Parameter(torch.zeros(features, y_dim))  # K0
        # Lambda0 = L L^T with L = strictly-lower(prior_tril) + diag(exp(prior_log_diag)): positive definite
        # for any values; it starts at the identity.
        self.prior_tril = nn.Parameter(torch.zeros(features, features))
        self.prior_log_diag = nn.Parameter(torch.zeros(features))
        self.log_noise = nn.Parameter(torch.zeros(y_dim))  # log of Sigma's diagonal standard deviations

    def prior_precision(self) -> Tensor:
        """Lambda0 [n, n]."""
        factor = torch.tril(self.prior_tril, -1) + torch.diag(self.prior_log_diag.exp())
        return factor @ factor.mT

    def posterior(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(K_n [..., n, y_dim], the Cholesky factor of Lambda_n [..., n, n]) given the context (x, y)."""
        phi = self.features(x)
        precision = self.prior_precision()
        cholesky = _precision_cholesky(phi, precision)
        mean = torch.cholesky_solve(phi.mT @ y + precision @ self.prior_mean, cholesky)
        return mean, cholesky

    def predictive(self, mean: Tensor, cholesky: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, variance) [..., m, y_dim] of the posterior predictive at each target x; the mean of row q
        depends on x[q] alone."""
        phi = self.features(x)
        spread = torch.linalg.solve_triangular(cholesky, phi.mT, upper=False)  # L^-1 phi(x): [..., n, m]
        scale = 1 + (spread * spread).sum(dim=-2)  # 1 + phi^T Lambda_n^-1 phi, [..., m]
        return phi @ mean, scale.unsqueeze(-1) * (2 * self.log_noise).exp()


class ALPaCA(GradientAlgorithm):
    """ALPaCA on a regression suite (episodes [tasks, points, features]).

    The meta-parameters are phi's weights and the prior (K0, Lambda0, Sigma); a state is
    `{"mean": K_n, "cholesky": chol(Lambda_n)}` of one task's support set. Meta-training: Adam on the
    mean Gaussian NLL of the query targets under the posterior predictive, every task in one pass.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        # The suite's own model is not used: the widths of x and y size this learner's network.
        x_dim, y_dim, dtype = backbones.regression_widths(suite, "alpaca")
        net = ALPaCANet(x_dim, y_dim, hparams.hidden, hparams.layers, hparams.features,
                        hparams.activation).to(dtype)
        super().__init__(hparams, net, suite, backend)
        self.net = self.model
        self.x_dim, self.y_dim = x_dim, y_dim

    def nll(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """The mean Gaussian NLL of the query targets given the support set (tasks batched along any
        leading dimensions), differentiable with respect to the meta-parameters."""
        mean, variance = self.net.predictive(*self.net.posterior(sx, sy), qx)
        return F.gaussian_nll_loss(mean, qy, variance, full=True, eps=0.0)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return self.nll(sx, sy, qx, qy)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean NLL over the batch's tasks: every task has as many query points, so one batched pass
        gives the mean of the per-task losses."""
        return self.nll(batch.support_x, batch.support_y, batch.query_x, batch.query_y)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """The posterior given the support set, repeated steps+1 times: it is exact, no steps to take."""
        with torch.no_grad():
            mean, cholesky = self.net.posterior(support_x, support_y)
        return [{"mean": mean, "cholesky": cholesky}] * (steps + 1)

    def predict(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        """The posterior predictive mean K_n^T phi(x) at `x` [points, x_dim] (differentiable in x)."""
        return self.net.features(x) @ state["mean"]

    def predict_distribution(self, state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of the posterior predictive at `x`, each [points, y_dim]."""
        mean, variance = self.net.predictive(state["mean"], state["cholesky"], x)
        return mean, variance.sqrt()

    def describe(self) -> dict[str, Any]:
        noise = self.net.log_noise.detach().exp()
        return {"likelihood": "gaussian", "x_dim": self.x_dim, "y_dim": self.y_dim,
                "features": self.hparams.features, "noise_std": [round(float(s), 6) for s in noise],
                "trained_on": "query points' Gaussian NLL under the posterior predictive"}
