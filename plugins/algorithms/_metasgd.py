"""Meta-SGD itself, on harness.functional (the `metasgd` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness import TaskSuite
from harness.functional import GradientAlgorithm, Params, detached, inner_loop, snapshot

ALPHA_PREFIX = "alpha."  # names of the learned learning rates among the meta-parameters


class MetaSGD(GradientAlgorithm):
    """Meta-SGD: a learned initialisation plus a learned per-parameter inner learning rate.

    Each inner step is theta <- theta - alpha o grad L(theta) (equation 3 of the paper), differentiable
    w.r.t. both: the meta-gradient of alpha flows through the step itself, that of theta also through
    the inner gradient.
    """

    second_order = True

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        low, high = hparams.alpha_init
        # alpha is drawn from torch's global RNG (seeded by the harness) after the model is built.
        self.alpha: Params = {
            name: nn.Parameter(low + (high - low) * torch.rand(p.shape, dtype=p.dtype).to(self.device))
            for name, p in self.params.items()
        }

    def task_loss(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        """The query loss after `inner_steps` learned-rate steps; differentiable in theta and alpha."""
        adapted = inner_loop(self.train_loss, self.params, sx, sy, self.hparams.inner_steps, self.alpha,
                             autograd=self.fast_forward is not None)[-1]
        return self.train_loss(adapted, qx, qy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps learned-rate steps on one task; detached, fine under `torch.no_grad()`."""
        return inner_loop(self.loss, snapshot(self.params), support_x, support_y, steps, detached(self.alpha),
                          first_order=True)

    def meta_parameters(self) -> Params:
        return {**self.params, **{ALPHA_PREFIX + name: a for name, a in self.alpha.items()}}
