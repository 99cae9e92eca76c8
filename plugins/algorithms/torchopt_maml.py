"""MAML and first-order MAML with TorchOpt's differentiable optimisers: Ren, Feng, Liu, Wen, Yang,
Mguni, Wang & Yang (2023), "TorchOpt: An Efficient Library for Differentiable Optimization", JMLR 24
(arXiv:2211.06934), for Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML.

`torchopt-maml` is TorchOpt's own MAML recipe (its README and examples/few-shot/maml_omniglot.py):
`torchopt.MetaSGD(model, lr=inner_lr)` takes differentiable inner steps on the suite's model in place,
`torchopt.extract_state_dict` keeps references to the initial weights (and the inner optimiser's
state) and `torchopt.recover_state_dict` puts them back after each task. `MetaSGD.step` always
differentiates with `create_graph=True`; it has no first-order switch. So `torchopt-fomaml`, and test-
time adaptation, use TorchOpt's functional API instead: `torchopt.sgd(lr=inner_lr)` turns gradients
taken without a graph (constants: first order) into updates, and `torchopt.apply_updates(...,
inplace=False)` adds them to the parameter dict that `torch.func.functional_call` evaluates the model
with, so the query loss still reaches the initial weights through the update itself.

Meta-training loops over the tasks of a meta-batch in Python and back-propagates each task's query loss
as soon as it is computed (`harness.functional.TaskLoopAlgorithm`), then takes one Adam step at
`meta_lr`, as TorchOpt's example does. The hyper-parameters are the native `maml` / `fomaml`'s
(`metaharness_plugins.hparams`), less its `vmap_tasks`. TorchOpt is imported inside the factory, so
`harness list` stays fast and a missing TorchOpt marks these algorithms unavailable with an install hint.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from harness import AlgorithmSpec, TaskSuite, hookimpl
from harness.functional import Params, TaskLoopAlgorithm, detached, snapshot
from metaharness_plugins.hparams import FOMAMLHparams, MAMLHparams


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


_PAPERS = (
    "Ren et al. 2023, TorchOpt: An Efficient Library for Differentiable Optimization (JMLR); "
    "Finn, Abbeel & Levine 2017 (ICML)"
)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    kinds = frozenset({"regression", "classification"})
    return [
        AlgorithmSpec(
            name="torchopt-maml",
            factory=TorchOptMAML,
            hparams=MAMLHparams,
            task_kinds=kinds,
            description="TorchOpt's MetaSGD MAML (extract/recover_state_dict per task), maml's settings",
            paper=_PAPERS,
            second_order=True,
            requires=("torchopt",),
        ),
        AlgorithmSpec(
            name="torchopt-fomaml",
            factory=TorchOptMAML,
            hparams=FOMAMLHparams,
            task_kinds=kinds,
            description="first-order MAML with TorchOpt's functional sgd, apply_updates; fomaml's settings",
            paper=_PAPERS + ", section 5.2",
            requires=("torchopt",),
        ),
    ]
