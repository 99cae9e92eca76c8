"""MAML through higher's innerloop_ctx (the `higher` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from harness import TaskSuite
from harness.functional import Params, TaskLoopAlgorithm, snapshot
from metaharness_plugins.hparams import MAMLHparams


def _carrying(loss: Tensor, params: Iterable[Tensor], grads: Iterable[Tensor]) -> Tensor:
    """A scalar with `loss`'s value whose gradient with respect to `params` is `grads`: how the
    first-order meta-gradient, taken at the adapted weights, is handed to the initial weights through
    the task loop's `backward()` (the mapping higher's maintainers prescribe, higher#63)."""
    link = sum((p * g.detach()).sum() for p, g in zip(params, grads, strict=True))
    return loss.detach() + (link - link.detach())


class HigherMAML(TaskLoopAlgorithm):
    """MAML / first-order MAML (`hparams.first_order`) with `higher.innerloop_ctx` over the suite's own
    model. States are parameter dicts named as in the model."""

    def __init__(self, hparams: MAMLHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.higher = importlib.import_module("higher")
        # higher turns a torch.optim optimiser into a differentiable one: plain SGD at inner_lr is MAML's
        # inner step theta - alpha * grad (equation 1 of the MAML paper).
        self.inner_optimizer = torch.optim.SGD(self.model.parameters(), lr=hparams.inner_lr)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        first_order = self.hparams.first_order
        with self.higher.innerloop_ctx(
            self.model, self.inner_optimizer, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for _ in range(self.hparams.inner_steps):
                diffopt.step(self.suite.loss(fmodel(sx), sy))
            query = self.suite.loss(fmodel(qx), qy)
            if not first_order:
                return query
            fast = list(fmodel.parameters())  # the latest fast weights: leaves, the graph cut at each step
            grads = torch.autograd.grad(query, fast)
        return _carrying(query, self.params.values(), grads)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Parameters after 0..steps inner SGD steps in higher's test mode (detached copies of the
        weights, no higher-order graph); works under the caller's `torch.no_grad()`."""
        names = list(self.params)
        states = [snapshot(self.params)]
        with (
            torch.enable_grad(),
            self.higher.innerloop_ctx(
                self.model, self.inner_optimizer, copy_initial_weights=True, track_higher_grads=False
            ) as (fmodel, diffopt),
        ):
            for _ in range(steps):
                diffopt.step(self.suite.loss(fmodel(support_x), support_y))
                states.append({name: p.detach() for name, p in zip(names, fmodel.parameters(), strict=True)})
        return states
