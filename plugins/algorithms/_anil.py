"""ANIL itself, on harness.functional (the `anil` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from harness import TaskSuite, split_classifier
from harness.functional import GradientAlgorithm, Params, inner_loop, snapshot


class ANIL(GradientAlgorithm):
    """ANIL on a classification suite whose model is an nn.Sequential ending in an nn.Linear head.

    The meta-parameters are the model's own parameters (body and head initialisation), named as in the
    model. A state is a full parameter dict: the body's tensors (shared, unchanged, by every state)
    and the adapted head's.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
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
