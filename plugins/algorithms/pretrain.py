"""The "pretrained" baseline of Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML, section 5.1: one model trained on all tasks, then fine-tuned.

Meta-training is ordinary supervised learning on the pooled points of every task in the batch
(no inner loop, no notion of a task); at meta-test the pretrained weights are fine-tuned on the
task's support set with plain SGD. The paper compares MAML with this baseline (pretraining one
network on all tasks, then fine-tuning on the K points at test time with a tuned step size) to show
that the gain comes from meta-learning rather than from seeing the same data. On the sinusoid suite
it learns roughly the mean function of the tasks, and a few gradient steps move it little.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad

from harness import Algorithm, AlgorithmSpec, TaskBatch, TaskSuite, check_ranges, hookimpl

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PretrainHparams:
    """lr: Adam's step size for pretraining (0.001, MAML's meta step size, for a like-for-like budget).
    meta_batch_size: tasks whose points are pooled into one training batch (25, as MAML's).
    inner_lr: SGD step size of test-time fine-tuning (the paper tuned it; 0.01 is MAML's alpha).
    test_steps: fine-tuning steps at meta-test (10, as in the paper's figure 2 and table).
    """

    lr: float = 0.001
    meta_batch_size: int = 25
    inner_lr: float = 0.01
    test_steps: int = 10

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size",), non_negative=("test_steps",),
                     positive=("lr", "inner_lr"))


class Pretrain(Algorithm):
    """Train one model on every task's points; fine-tune it with SGD on each test task."""

    def __init__(self, hparams: PretrainHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.model = model.to(self.device)
        self.params: Params = dict(self.model.named_parameters())
        self.optimizer = torch.optim.Adam(self.params.values(), lr=hparams.lr)
        self._grad: Callable[..., Params] = grad(self._loss)

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.suite.loss(functional_call(self.model, params, (x,)), y)

    def meta_train_step(self, batch: TaskBatch) -> float:
        """One Adam step on the pooled support and query points of all tasks; returns that loss."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1).flatten(0, 1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1).flatten(0, 1)
        loss = self._loss(self.params, x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps SGD fine-tuning steps on one task's support set (detached)."""
        params = {name: p.detach().clone() for name, p in self.params.items()}
        states = [params]
        for _ in range(steps):
            grads = self._grad(params, support_x, support_y)
            params = {name: (p - self.hparams.inner_lr * grads[name]).detach() for name, p in params.items()}
            states.append(params)
        return states

    def predict(self, state: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, state, (x,))

    def meta_parameters(self) -> Params:
        return dict(self.params)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="pretrain",
            factory=Pretrain,
            hparams=PretrainHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="baseline: pretrain one model on all tasks' pooled data, fine-tune with SGD at test",
            paper="Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning (ICML), section 5.1 baseline",
            second_order=False,
        )
    ]
