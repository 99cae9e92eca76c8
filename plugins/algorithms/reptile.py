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

Parameters are dicts of tensors evaluated with `torch.func.functional_call`, gradients come from
`torch.func.grad`, and the tasks of a meta-batch are vectorised with `torch.func.vmap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from harness import Algorithm, AlgorithmSpec, TaskBatch, TaskSuite, check_ranges, hookimpl

Params = dict[str, torch.Tensor]


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


def _detached(params: Params) -> Params:
    return {name: tensor.detach() for name, tensor in params.items()}


class Reptile(Algorithm):
    """Reptile: move the initialisation towards the weights SGD reaches on each task."""

    def __init__(self, hparams: ReptileHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.model = model.to(self.device)
        self.params: Params = dict(self.model.named_parameters())
        self._grad: Callable[..., Params] = grad(self._loss)

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.suite.loss(functional_call(self.model, params, (x,)), y)

    def _inner_loop(self, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps SGD steps of size inner_lr on (x, y); nothing is differentiated through."""
        states = [params]
        for _ in range(steps):
            grads = self._grad(params, x, y)
            params = {name: p - self.hparams.inner_lr * grads[name].detach() for name, p in params.items()}
            states.append(params)
        return states

    def _task_update(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[Params, torch.Tensor]:
        """One task's adapted weights W_i and the query loss they reach."""
        adapted = self._inner_loop(params, x, y, self.hparams.inner_steps)[-1]
        return adapted, self._loss(adapted, qx, qy)

    def meta_train_step(self, batch: TaskBatch) -> float:
        """One outer update phi <- phi + outer_lr * (mean_i W_i - phi); returns the tasks' mean query loss
        of W_i before the update (W_i has trained on the query points too, so this is a training loss)."""
        phi = _detached(self.params)
        # The task's data at meta-train is all of its points (support and query).
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        with torch.no_grad():
            if self.hparams.vmap_tasks:
                adapted, losses = vmap(self._task_update, in_dims=(None, 0, 0, 0, 0))(
                    phi, x, y, batch.query_x, batch.query_y
                )
                mean_adapted = {name: t.mean(dim=0) for name, t in adapted.items()}
            else:
                results = [
                    self._task_update(phi, x[i], y[i], batch.query_x[i], batch.query_y[i])
                    for i in range(batch.num_tasks)
                ]
                mean_adapted = {name: torch.stack([r[0][name] for r in results]).mean(dim=0) for name in phi}
                losses = torch.stack([r[1] for r in results])
            for name, p in self.params.items():
                p.add_(mean_adapted[name] - p, alpha=self.hparams.outer_lr)
        return float(losses.mean())

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps SGD steps on one task's support set; detached, fine under no_grad."""
        start = {name: p.detach().clone() for name, p in self.params.items()}
        return [_detached(state) for state in self._inner_loop(start, support_x, support_y, steps)]

    def predict(self, state: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, state, (x,))

    def meta_parameters(self) -> Params:
        return dict(self.params)


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
