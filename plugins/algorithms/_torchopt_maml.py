"""MAML through TorchOpt (the `torchopt` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from harness import TaskSuite
from harness.functional import Params, TaskLoopAlgorithm, detached, snapshot
from metaharness_plugins.hparams import MAMLHparams


class TorchOptMAML(TaskLoopAlgorithm):
    """MAML with `torchopt.MetaSGD` (second order), first-order MAML with TorchOpt's functional `sgd`
    (`hparams.first_order`). States are parameter dicts named as in the model."""

    def __init__(self, hparams: MAMLHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.torchopt = importlib.import_module("torchopt")
        self.meta_sgd = self.torchopt.MetaSGD(self.model, lr=hparams.inner_lr)
        self.sgd = self.torchopt.sgd(lr=hparams.inner_lr)

    # --- the functional inner loop: first order, and test time ---

    def sgd_steps(self, params: Params, x: Tensor, y: Tensor, steps: int) -> list[Params]:
        """States after 0..steps first-order SGD steps taken by TorchOpt's functional `sgd`: each
        gradient is a constant, and each state depends on `params` through the updates alone."""
        names = list(params)
        opt_state = self.sgd.init(tuple(params.values()))
        states = [params]
        for _ in range(steps):
            flat = tuple(states[-1].values())
            grads = torch.autograd.grad(self.loss(states[-1], x, y), flat)
            updates, opt_state = self.sgd.update(grads, opt_state, params=flat, inplace=False)
            states.append(
                dict(zip(names, self.torchopt.apply_updates(flat, updates, inplace=False), strict=True))
            )
        return states

    # --- meta-training ---

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        if self.hparams.first_order:
            adapted = self.sgd_steps(self.params, sx, sy, self.hparams.inner_steps)[-1]
            return self.loss(adapted, qx, qy)
        net_state = self.torchopt.extract_state_dict(self.model)
        opt_state = self.torchopt.extract_state_dict(self.meta_sgd)
        try:
            for _ in range(self.hparams.inner_steps):
                self.meta_sgd.step(self.suite.loss(self.model(sx), sy))
            return self.suite.loss(self.model(qx), qy)
        finally:
            # The graph of the query loss keeps the adapted tensors alive; the module gets its own
            # nn.Parameters back, which are what Adam steps and what the graph leads back to.
            self.torchopt.recover_state_dict(self.model, net_state)
            self.torchopt.recover_state_dict(self.meta_sgd, opt_state)

    # --- meta-testing ---

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """Parameters after 0..steps of TorchOpt's functional SGD from detached copies of the weights
        (test time needs no second order); works under the caller's `torch.no_grad()`."""
        start = {name: t.requires_grad_() for name, t in snapshot(self.params).items()}
        with torch.enable_grad():
            states = self.sgd_steps(start, support_x, support_y, steps)
        return [detached(state) for state in states]
