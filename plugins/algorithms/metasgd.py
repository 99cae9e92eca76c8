"""Meta-SGD: Li, Zhou, Chen & Li (2017), "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"
(arXiv:1707.09835).

Meta-SGD meta-learns, besides MAML's initialisation theta, a learning-rate tensor alpha of the same
shape as theta; one inner step is theta' = theta - alpha o grad L_support(theta) (equation 3, "o"
the element-wise product), so alpha sets both the step size and the direction of adaptation. The
meta-objective, the mean query loss after that step, is minimised jointly over (theta, alpha) with
Adam, differentiating through the inner step (algorithm 1 of the paper). The paper adapts with a
single step at meta-train and meta-test; more steps reuse the same alpha.

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`, the inner gradient is `torch.func.grad`, and tasks of a meta-batch are
vectorised with `torch.func.vmap` or looped over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness import AlgorithmSpec, TaskSuite, hookimpl
from harness.functional import GradientAlgorithm, Params, detached, inner_loop, snapshot
from metaharness_plugins import hparams as shared

ALPHA_PREFIX = "alpha."  # names of the learned learning rates among the meta-parameters


@dataclass(frozen=True)
class MetaSGDHparams(shared.MetaSGDHparams):
    """Meta-SGD's settings (`shared.MetaSGDHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the meta-batch's tasks with vmap (the same numbers as a Python loop, faster).
    """

    vmap_tasks: bool = True


class MetaSGD(GradientAlgorithm):
    """Meta-SGD: a learned initialisation plus a learned per-parameter inner learning rate.

    Each inner step is theta <- theta - alpha o grad L(theta) (equation 3 of the paper), differentiable
    w.r.t. both: the meta-gradient of alpha flows through the step itself, that of theta also through
    the inner gradient.
    """

    def __init__(self, hparams: MetaSGDHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        low, high = hparams.alpha_init
        # alpha is drawn from torch's global RNG (seeded by the harness) after the model is built.
        self.alpha: Params = {
            name: nn.Parameter(low + (high - low) * torch.rand(p.shape, dtype=p.dtype).to(self.device))
            for name, p in self.params.items()
        }

    def task_loss(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor) -> torch.Tensor:
        """The query loss after `inner_steps` learned-rate steps; differentiable in theta and alpha."""
        adapted = inner_loop(self.loss, self.params, sx, sy, self.hparams.inner_steps, self.alpha)[-1]
        return self.loss(adapted, qx, qy)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """States after 0..steps learned-rate steps on one task; detached, fine under `torch.no_grad()`."""
        return inner_loop(self.loss, snapshot(self.params), support_x, support_y, steps, detached(self.alpha),
                          first_order=True)

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
