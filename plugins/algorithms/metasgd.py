"""Meta-SGD: Li, Zhou, Chen & Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"
(arXiv:1707.09835).

Meta-SGD meta-learns, besides MAML's initialisation theta, a learning-rate tensor alpha of the same
shape as theta; one inner step is theta' = theta - alpha o grad L_support(theta) (equation 3, "o"
the element-wise product), so alpha sets both the step size and the direction of adaptation. The
meta-objective, the mean query loss after that step, is minimised jointly over (theta, alpha) with
Adam, differentiating through the inner step (algorithm 1 of the paper). The paper adapts with a
single step at meta-train and meta-test; more steps reuse the same alpha.

Parameters are dicts of tensors evaluated with `torch.func.functional_call`; the inner gradient is
`torch.func.grad`, and tasks of a meta-batch are vectorised with `torch.func.vmap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from harness import Algorithm, AlgorithmSpec, TaskBatch, TaskSuite, hookimpl
from metaharness_plugins import hparams as shared

Params = dict[str, torch.Tensor]

ALPHA_PREFIX = "alpha."  # names of the learned learning rates among the meta-parameters


@dataclass(frozen=True)
class MetaSGDHparams(shared.MetaSGDHparams):
    """Meta-SGD's settings (`shared.MetaSGDHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the meta-batch's tasks with vmap (the same numbers as a Python loop, faster).
    """

    vmap_tasks: bool = True


def _detached(params: Params) -> Params:
    return {name: tensor.detach() for name, tensor in params.items()}


class MetaSGD(Algorithm):
    """Meta-SGD: a learned initialisation plus a learned per-parameter inner learning rate."""

    def __init__(self, hparams: MetaSGDHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.model = model.to(self.device)
        self.params: Params = dict(self.model.named_parameters())
        low, high = hparams.alpha_init
        # alpha is drawn from torch's global RNG (seeded by the harness) after the model is built.
        self.alpha: Params = {
            name: nn.Parameter(low + (high - low) * torch.rand(p.shape, dtype=p.dtype).to(self.device))
            for name, p in self.params.items()
        }
        self.optimizer = torch.optim.Adam([*self.params.values(), *self.alpha.values()], lr=hparams.meta_lr)
        self._inner_grad: Callable[..., Params] = grad(self._loss)

    # --- the inner loop, shared by meta-training and test-time adaptation ---

    def _loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.suite.loss(functional_call(self.model, params, (x,)), y)

    def _inner_loop(
        self, params: Params, alpha: Params, x: torch.Tensor, y: torch.Tensor, steps: int
    ) -> list[Params]:
        """States after 0..steps steps theta <- theta - alpha o grad L(theta) (equation 3 of the paper).

        Differentiable w.r.t. both `params` and `alpha` when they require grad: the meta-gradient of
        alpha flows through the step itself, that of theta also through the inner gradient.
        """
        states = [params]
        for _ in range(steps):
            grads = self._inner_grad(params, x, y)
            params = {name: p - alpha[name] * grads[name] for name, p in params.items()}
            states.append(params)
        return states

    def _task_query_loss(
        self,
        params: Params,
        alpha: Params,
        sx: torch.Tensor,
        sy: torch.Tensor,
        qx: torch.Tensor,
        qy: torch.Tensor,
    ) -> torch.Tensor:
        adapted = self._inner_loop(params, alpha, sx, sy, self.hparams.inner_steps)[-1]
        return self._loss(adapted, qx, qy)

    # --- meta-training ---

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """Mean over tasks of the query loss after the inner step(s); differentiable in theta and alpha."""
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.hparams.vmap_tasks:
            per_task = vmap(self._task_query_loss, in_dims=(None, None, 0, 0, 0, 0))(
                self.params, self.alpha, *tensors
            )
        else:
            per_task = torch.stack(
                [
                    self._task_query_loss(self.params, self.alpha, *(t[i] for t in tensors))
                    for i in range(batch.num_tasks)
                ]
            )
        return per_task.mean()

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, gradient w.r.t. every meta-parameter, names as in `meta_parameters()`)."""
        loss = self.meta_loss(batch)
        named = self.meta_parameters()
        grads = torch.autograd.grad(loss, list(named.values()))
        return float(loss.detach()), dict(zip(named, grads))

    def meta_train_step(self, batch: TaskBatch) -> float:
        loss, grads = self.meta_gradient(batch)
        for name, p in self.meta_parameters().items():
            p.grad = grads[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    # --- meta-testing ---

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps learned-rate steps on one task; detached, fine under `torch.no_grad()`."""
        start = {name: p.detach().clone() for name, p in self.params.items()}
        alpha = _detached(self.alpha)
        states = self._inner_loop(start, alpha, support_x, support_y, steps)
        return [_detached(state) for state in states]

    def predict(self, state: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, state, (x,))

    def meta_parameters(self) -> Params:
        return {**self.params, **{ALPHA_PREFIX + name: a for name, a in self.alpha.items()}}


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="metasgd",
            factory=MetaSGD,
            hparams=MetaSGDHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="Meta-SGD: MAML with a meta-learned per-parameter inner learning rate (one step)",
            paper="Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (arXiv:1707.09835)",
            second_order=True,
        )
    ]
