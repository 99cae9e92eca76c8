"""Almost No Inner Loop (ANIL): Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML", ICLR (arXiv:1909.09157).

ANIL is MAML with the inner loop restricted to the network's head (its final Linear classifier): the
body's parameters are meta-learned by the outer loop only (section 4). A task's support and query
features are therefore computed once by the body, and the inner SGD steps, theta'_head = theta_head -
alpha * grad L_support(theta_head), only touch the small head, which makes them cheap. The
meta-gradient reaches the body through the features and, for second-order ANIL, through the inner
steps too; `first_order` treats the inner gradients as constants (as first-order MAML does).

Parameters are dicts of tensors evaluated with `torch.func.functional_call`; the inner gradient is
`torch.func.grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from harness import Algorithm, AlgorithmSpec, TaskBatch, TaskSuite, hookimpl, split_classifier
from metaharness_plugins import hparams as shared

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ANILHparams(shared.ANILHparams):
    """ANIL's settings (`shared.ANILHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the tasks of a meta-batch with vmap rather than loop over them. Both give the
        same numbers; on CPU with conv4 the loop was the faster (see the module's tests), so it is
        the default.
    """

    vmap_tasks: bool = False


def _detached(params: Params) -> Params:
    return {name: tensor.detach() for name, tensor in params.items()}


class ANIL(Algorithm):
    """ANIL on a classification suite whose model is an nn.Sequential ending in an nn.Linear head.

    The meta-parameters are the model's own parameters (body and head initialisation), named as in the
    model. A state is a full parameter dict: the body's tensors (shared, unchanged, by every state)
    and the adapted head's.
    """

    def __init__(self, hparams: ANILHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.body, self.head = split_classifier(model, "anil", "head (the only layer its inner loop adapts)")
        self.model = model.to(self.device)
        prefix = f"{len(model) - 1}."
        self.params: Params = dict(self.model.named_parameters())
        self.head_names = {name: name[len(prefix):] for name in self.params if name.startswith(prefix)}
        self.optimizer = torch.optim.Adam(self.params.values(), lr=hparams.meta_lr)
        self._inner_grad: Callable[..., Params] = grad(self._head_loss)

    # --- the inner loop on the head, shared by meta-training and test-time adaptation ---

    def _head_params(self, params: Params) -> Params:
        return {short: params[name] for name, short in self.head_names.items()}

    def _head_loss(self, head: Params, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.suite.loss(functional_call(self.head, head, (features,)), y)

    def _inner_loop(self, head: Params, features: torch.Tensor, y: torch.Tensor, steps: int,
                    keep_graph: bool) -> list[Params]:
        """Head parameters after 0..steps SGD steps of size inner_lr on the support features."""
        states = [head]
        for _ in range(steps):
            if keep_graph:
                grads = self._inner_grad(head, features, y)
            else:
                grads = _detached(self._inner_grad(_detached(head), features.detach(), y))
            head = {name: p - self.hparams.inner_lr * grads[name] for name, p in head.items()}
            states.append(head)
        return states

    def _task_query_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        # The body runs once per task and set, not once per inner step: that is ANIL's saving.
        support, query = self.body(sx), self.body(qx)
        head = self._head_params(self.params)
        keep_graph = not self.hparams.first_order
        adapted = self._inner_loop(head, support, sy, self.hparams.inner_steps, keep_graph)[-1]
        return self._head_loss(adapted, query, qy)

    # --- meta-training ---

    def meta_loss(self, batch: TaskBatch) -> torch.Tensor:
        """Mean over the batch's tasks of the query loss after adapting the head (differentiable)."""
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        if self.hparams.vmap_tasks:
            per_task = vmap(self._task_query_loss)(*tensors)
        else:
            per_task = torch.stack(
                [self._task_query_loss(*(t[i] for t in tensors)) for i in range(batch.num_tasks)]
            )
        return per_task.mean()

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, d meta-loss / d meta-parameters) on `batch`, without touching the optimiser."""
        loss = self.meta_loss(batch)
        grads = torch.autograd.grad(loss, list(self.params.values()))
        return float(loss.detach()), dict(zip(self.params, grads))

    def meta_train_step(self, batch: TaskBatch) -> float:
        loss, grads = self.meta_gradient(batch)
        for name, p in self.params.items():
            p.grad = grads[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    # --- meta-testing ---

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """Full parameter dicts after 0..steps inner steps on the head; the body's tensors are shared."""
        start = {name: p.detach().clone() for name, p in self.params.items()}
        with torch.no_grad():
            body = {name: t for name, t in start.items() if name not in self.head_names}
            features = functional_call(self.body, body, (support_x,))
        heads = self._inner_loop(self._head_params(start), features, support_y, steps, keep_graph=False)
        return [{**start, **{name: head[short] for name, short in self.head_names.items()}} for head in heads]

    def predict(self, state: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, state, (x,))

    def meta_parameters(self) -> Params:
        return dict(self.params)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="anil",
            factory=ANIL,
            hparams=ANILHparams,
            task_kinds=frozenset({"classification"}),
            description="ANIL: MAML with an inner loop on the final Linear head only (body: outer loop)",
            paper="Raghu, Raghu, Bengio & Vinyals 2020, Rapid Learning or Feature Reuse? Towards "
                  "Understanding the Effectiveness of MAML (ICLR)",
            second_order=True,
        )
    ]
