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

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class MetaSGDHparams(shared.MetaSGDHparams):
    """Meta-SGD's settings (`shared.MetaSGDHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the meta-batch's tasks with vmap (the same numbers as a Python loop, faster).
    """

    vmap_tasks: bool = field(default=True, metadata=RESULT_NEUTRAL)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="metasgd",
            factory="metaharness_plugins.algorithms._metasgd:MetaSGD",
            hparams=MetaSGDHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="Meta-SGD: MAML with a meta-learned per-parameter inner learning rate (one step)",
            paper="Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning (arXiv:1707.09835)",
            second_order=True,
        )
    ]


# The implementation lives in _metasgd.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._metasgd")
