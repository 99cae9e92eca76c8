"""MAML and first-order MAML with higher's differentiable inner loops: Grefenstette, Amos, Yarats, Htut,
Molchanov, Meier, Kiela, Cho & Chintala (2019), "Generalized Inner Loop Meta-Learning" (arXiv:1910.01727),
for Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML.

`higher-maml` and `higher-fomaml` do their real work with `higher.innerloop_ctx`: the suite's model is
monkey-patched into a stateless module with fast weights, and `torch.optim.SGD` at `inner_lr` becomes a
differentiable optimiser whose `step(loss)` is MAML's inner update. Meta-training is written as higher's
MAML example writes it: a Python loop over the tasks of a meta-batch, each task's query loss
back-propagated as soon as it is computed (`harness.functional.TaskLoopAlgorithm`), then one Adam step
at `meta_lr`.

Which of higher's switches give which algorithm (tests/plugins/test_higher_maml.py checks all three):

- MAML: `copy_initial_weights=False`, so the model's own weights are the first fast weights and the
  meta-gradient reaches them; with higher's default, `True`, they are detached copies and no gradient
  reaches the model at all. `track_higher_grads=True` keeps every inner step differentiable.
- first-order MAML: `track_higher_grads=False`, so each inner gradient is a constant and every new fast
  weight is a fresh leaf; no second-order graph is built. The query loss then reaches only the last fast
  weights, and, as higher's maintainers prescribe (facebookresearch/higher#63), its gradient with
  respect to them is the first-order meta-gradient, mapped by hand onto the initial weights.
- test-time adaptation: `copy_initial_weights=True, track_higher_grads=False`, higher's "test mode".

The hyper-parameters are the native `maml` / `fomaml`'s (`metaharness_plugins.hparams`), less its
`vmap_tasks`. higher is imported inside the factory, so `harness list` stays fast and a missing higher
marks these algorithms unavailable with an install hint.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from harness import AlgorithmSpec, TaskSuite, hookimpl
from harness.functional import Params, TaskLoopAlgorithm, snapshot
from metaharness_plugins.hparams import FOMAMLHparams, MAMLHparams


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


_PAPERS = (
    "Grefenstette et al. 2019, Generalized Inner Loop Meta-Learning (arXiv:1910.01727); "
    "Finn, Abbeel & Levine 2017 (ICML)"
)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    kinds = frozenset({"regression", "classification"})
    return [
        AlgorithmSpec(
            name="higher-maml",
            factory=HigherMAML,
            hparams=MAMLHparams,
            task_kinds=kinds,
            description="higher's innerloop_ctx MAML (differentiable SGD, second order), maml's settings",
            paper=_PAPERS,
            second_order=True,
            requires=("higher",),
        ),
        AlgorithmSpec(
            name="higher-fomaml",
            factory=HigherMAML,
            hparams=FOMAMLHparams,
            task_kinds=kinds,
            description="higher's innerloop_ctx, track_higher_grads=False (first order), fomaml's settings",
            paper=_PAPERS + ", section 5.2",
            requires=("higher",),
        ),
    ]
