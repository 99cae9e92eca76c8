"""The pretraining baseline itself (the `pretrain` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import torch

from harness import TaskBatch
from harness.functional import GradientAlgorithm, Params, inner_loop, snapshot


class Pretrain(GradientAlgorithm):
    """Train one model on every task's points; fine-tune it with SGD on each test task."""

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.params.values(), lr=self.hparams.lr)

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """The loss on the pooled support and query points of all tasks (what one Adam step lowers)."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        return self.loss(self.params, x, y)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps SGD fine-tuning steps on one task's support set (detached)."""
        return inner_loop(self.loss, snapshot(self.params), support_x, support_y, steps, self.hparams.inner_lr,
                          first_order=True)
