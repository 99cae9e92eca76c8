"""Almost No Inner Loop (ANIL): Raghu, Raghu, Bengio & Vinyals (2020), "Rapid Learning or Feature
Reuse? Towards Understanding the Effectiveness of MAML", ICLR (arXiv:1909.09157).

ANIL is MAML with the inner loop restricted to the network's head (its final Linear classifier): the
body's parameters are meta-learned by the outer loop only (section 4). A task's support and query
features are therefore computed once by the body, and the inner SGD steps, theta'_head = theta_head -
alpha * grad L_support(theta_head), only touch the small head, which makes them cheap. The
meta-gradient reaches the body through the features and, for second-order ANIL, through the inner
steps too; `first_order` treats the inner gradients as constants (as first-order MAML does).

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`, the inner gradient is `torch.func.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from harness import AlgorithmSpec, TaskSuite, hookimpl, split_classifier
from harness.functional import GradientAlgorithm, Params, inner_loop, snapshot
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class ANILHparams(shared.ANILHparams):
    """ANIL's settings (`shared.ANILHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the tasks of a meta-batch with vmap rather than loop over them. Both give the
        same numbers; on CPU with conv4 the loop was the faster (see the module's tests), so it is
        the default.
    """

    vmap_tasks: bool = False


class ANIL(GradientAlgorithm):
    """ANIL on a classification suite whose model is an nn.Sequential ending in an nn.Linear head.

    The meta-parameters are the model's own parameters (body and head initialisation), named as in the
    model. A state is a full parameter dict: the body's tensors (shared, unchanged, by every state)
    and the adapted head's.
    """

    def __init__(self, hparams: ANILHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        self.body, self.head = split_classifier(model, "anil", "head (the only layer its inner loop adapts)")
        super().__init__(hparams, model, suite, backend)
        prefix = f"{len(model) - 1}."
        self.head_names = {name: name[len(prefix):] for name in self.params if name.startswith(prefix)}

    # --- the inner loop on the head, shared by meta-training and test-time adaptation ---

    def _head_params(self, params: Params) -> Params:
        return {short: params[name] for name, short in self.head_names.items()}

    def _head_loss(self, head: Params, features: Tensor, y: Tensor) -> Tensor:
        return self.suite.loss(functional_call(self.head, head, (features,)), y)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """The query loss after `inner_steps` SGD steps of the head on the support features."""
        # The body runs once per task and set, not once per inner step: that is ANIL's saving.
        support, query = self.body(sx), self.body(qx)
        hp = self.hparams
        adapted = inner_loop(self._head_loss, self._head_params(self.params), support, sy, hp.inner_steps,
                             hp.inner_lr, first_order=hp.first_order)[-1]
        return self._head_loss(adapted, query, qy)

    # --- meta-testing ---

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """Full parameter dicts after 0..steps inner steps on the head; the body's tensors are shared."""
        start = snapshot(self.params)
        with torch.no_grad():
            body = {name: t for name, t in start.items() if name not in self.head_names}
            features = functional_call(self.body, body, (support_x,))
        heads = inner_loop(self._head_loss, self._head_params(start), features, support_y, steps,
                           self.hparams.inner_lr, first_order=True)
        return [{**start, **{name: head[short] for name, short in self.head_names.items()}} for head in heads]


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
