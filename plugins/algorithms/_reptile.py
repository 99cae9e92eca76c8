"""Reptile itself, on harness.functional (the `reptile` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import torch

from harness import TaskBatch
from harness.functional import GradientAlgorithm, Params, detached, inner_loop, over_tasks, snapshot


class Reptile(GradientAlgorithm):
    """Reptile: move the initialisation towards the weights SGD reaches on each task.

    No meta-gradient and no optimiser: `meta_train_step` interpolates the parameters in place.
    """

    def _task_update(
        self, x: torch.Tensor, y: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        """One task's adapted weights W_i (SGD from phi, nothing differentiated) and their query loss."""
        adapted = inner_loop(self.loss, detached(self.params), x, y, self.hparams.inner_steps, self.hparams.inner_lr,
                             first_order=True)[-1]
        return adapted, self.loss(adapted, qx, qy)

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        raise NotImplementedError("reptile has no meta-gradient: its outer update interpolates the weights")

    def meta_train_step(self, batch: TaskBatch) -> float:
        """One outer update phi <- phi + outer_lr * (mean_i W_i - phi); returns the tasks' mean query loss
        of W_i before the update (W_i has trained on the query points too, so this is a training loss)."""
        # The task's data at meta-train is all of its points (support and query).
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        with torch.no_grad():
            adapted, losses = over_tasks(self._task_update, (x, y, batch.query_x, batch.query_y),
                                         vmap=self.vmap_tasks)
            for name, p in self.params.items():
                p.add_(adapted[name].mean(dim=0) - p, alpha=self.hparams.outer_lr)
        return float(losses.mean())

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps SGD steps on one task's support set; detached, fine under no_grad."""
        return inner_loop(self.loss, snapshot(self.params), support_x, support_y, steps, self.hparams.inner_lr,
                          first_order=True)
