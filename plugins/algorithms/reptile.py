"""Reptile: Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms"
(arXiv:1803.02999).

Reptile runs k steps of SGD on each task from the current initialisation phi, giving W_i, and
moves the initialisation towards the adapted weights: phi <- phi + epsilon * mean_i (W_i - phi)
(algorithm 2 of the paper, the batched version). No meta-gradient is back-propagated; the update
approximates first-order MAML plus a term that maximises within-task gradient agreement
(section 5 of the paper).

Choices for the harness ("the sine example" below is the sine-wave demo code the authors published
with the paper's OpenAI blog post):
- The inner optimiser is plain SGD, the same loop as test-time adaptation. The paper's few-shot
  classification runs use Adam in the inner loop; the sine example uses SGD.
- The outer step size epsilon is constant. The sine example starts at 0.1 and anneals it
  linearly to 0 over the run, which needs the total number of iterations, which an algorithm does
  not know here (the harness owns the outer loop and may stop early on a time limit).
- At meta-train each task's support and query points together are the task's data, trained on
  full-batch; at meta-test `adapt` sees only the support set.

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`, gradients come from `torch.func.grad`, and the tasks of a meta-batch are
vectorised with `torch.func.vmap` or looped over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness import AlgorithmSpec, TaskBatch, check_ranges, hookimpl
from harness.functional import GradientAlgorithm, Params, detached, inner_loop, over_tasks, snapshot


@dataclass(frozen=True)
class ReptileHparams:
    """Defaults from the sine example unless said otherwise.

    inner_lr: SGD step size inside a task (0.02 in the sine example).
    inner_steps: SGD steps per task at meta-train (one epoch of 50 points in minibatches of 10,
        that is 5 steps, in the sine example; here each step is full-batch on support + query).
    outer_lr: the outer step size epsilon (0.1 at the start of the sine example, kept constant here).
    meta_batch_size: tasks per outer update. The sine example uses 1; 25 matches MAML's sinusoid
        protocol, so both see the same number of tasks per harness iteration.
    test_steps: SGD steps at meta-test, 10 like MAML's sinusoid evaluation.
    vmap_tasks: vectorise the tasks' inner loops with vmap rather than a Python loop (same numbers).
    """

    inner_lr: float = 0.02
    inner_steps: int = 5
    outer_lr: float = 0.1
    meta_batch_size: int = 25
    test_steps: int = 10
    vmap_tasks: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("inner_steps", "meta_batch_size"), non_negative=("test_steps",),
                     positive=("inner_lr",))
        if not 0 < self.outer_lr <= 1:
            raise ValueError(f"outer_lr must be in (0, 1] (an interpolation step), got {self.outer_lr!r}")


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


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="reptile",
            factory=Reptile,
            hparams=ReptileHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="Reptile: move the initialisation towards SGD-adapted task weights (first order)",
            paper="Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms (arXiv:1803.02999)",
            second_order=False,
        )
    ]
