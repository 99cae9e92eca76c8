"""Conditional Neural Processes themselves (the `cnp` plugin registers them; imported when a cell builds
one)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskBatch, TaskSuite
from harness.functional import GradientAlgorithm
from metaharness_plugins import backbones


def gaussian_nll(mean: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """-log N(target; mean, diag(std^2)) per point (summed over the output's last dimension), averaged
    over the points and any leading dimensions: 0.5 log(2 pi) + log std + (target - mean)^2 / (2 std^2)."""
    z = (target - mean) / std
    per_point = (0.5 * math.log(2 * math.pi) + std.log() + 0.5 * z * z).sum(dim=-1)
    return per_point.mean()


class CNPNet(nn.Module):
    """Encoder h, mean aggregation and decoder g (Garnelo et al. 2018, section 2.4), batched over any
    leading dimensions: context [..., n, x_dim] and [..., n, y_dim], targets [..., m, x_dim]."""

    def __init__(self, x_dim: int, y_dim: int, hidden: int, encoder_layers: int, decoder_layers: int,
                 activation: str, min_std: float) -> None:
        super().__init__()
        self.min_std = min_std
        self.encoder = backbones.mlp(x_dim + y_dim, [hidden] * encoder_layers, activation)
        self.decoder = backbones.mlp(hidden + x_dim, [hidden] * decoder_layers + [2 * y_dim], activation)

    def represent(self, x: Tensor, y: Tensor) -> Tensor:
        """r = mean_i h(x_i, y_i): [..., hidden], the same for any order of the context points."""
        return self.encoder(torch.cat([x, y], dim=-1)).mean(dim=-2)

    def distribution(self, r: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) [..., m, y_dim] of the predictive Gaussian at each target x given r."""
        features = torch.cat([r.unsqueeze(-2).expand(*x.shape[:-1], r.shape[-1]), x], dim=-1)
        mean, raw = self.decoder(features).chunk(2, dim=-1)
        # Softplus keeps the scale positive; the floor stops the likelihood from collapsing the variance
        # onto the context points (the released example's 0.1 + 0.9 softplus).
        return mean, self.min_std + (1 - self.min_std) * F.softplus(raw)


class CNP(GradientAlgorithm):
    """A Conditional Neural Process on a regression suite (episodes [tasks, points, features]).

    The meta-parameters are the CNP's encoder and decoder; a state is `{"r": representation}` of one
    task's support set. Meta-training: Adam on the mean Gaussian NLL of the targets (the query points,
    and the support points with `context_in_targets`), the batch's tasks computed in one batched pass.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        # The suite's own model is not used: the widths of x and y size this learner's network.
        x_dim, y_dim, dtype = backbones.regression_widths(suite, "cnp")
        net = CNPNet(x_dim, y_dim, hparams.hidden, hparams.encoder_layers, hparams.decoder_layers,
                     hparams.activation, hparams.min_std).to(dtype)
        super().__init__(hparams, net, suite, backend)
        self.net = self.model
        self.x_dim, self.y_dim = x_dim, y_dim

    def nll(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """The training loss of tasks (with or without a leading task dimension): the Gaussian NLL of the
        targets given the context, differentiable with respect to the meta-parameters."""
        if self.hparams.context_in_targets:
            qx, qy = torch.cat([sx, qx], dim=-2), torch.cat([sy, qy], dim=-2)
        mean, std = self.net.distribution(self.net.represent(sx, sy), qx)
        return gaussian_nll(mean, std, qy)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return self.nll(sx, sy, qx, qy)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean NLL over the batch's tasks: every task has as many points, so one batched pass gives
        the mean of the per-task losses."""
        return self.nll(batch.support_x, batch.support_y, batch.query_x, batch.query_y)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """[{"r": r}] repeated steps+1 times: the representation of the support set; no steps to take."""
        with torch.no_grad():
            state = {"r": self.net.represent(support_x, support_y)}
        return [state] * (steps + 1)

    def predict(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        """The predictive mean at `x` [points, x_dim]: what the suite's metric scores (differentiable in
        x)."""
        return self.net.distribution(state["r"], x)[0]

    def predict_distribution(self, state: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of the predictive Gaussian at `x`, each [points, y_dim] (for a likelihood metric)."""
        return self.net.distribution(state["r"], x)

    def describe(self) -> dict[str, Any]:
        targets = "query and support" if self.hparams.context_in_targets else "query"
        return {"likelihood": "gaussian", "min_std": self.hparams.min_std, "x_dim": self.x_dim,
                "y_dim": self.y_dim, "trained_on": f"{targets} points' Gaussian NLL"}
