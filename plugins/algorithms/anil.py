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

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class ANILHparams(shared.ANILHparams):
    """ANIL's settings (`shared.ANILHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the tasks of a meta-batch with vmap rather than loop over them. Both give the
        same numbers; on CPU with conv4 the loop was the faster (see the module's tests), so it is
        the default.
    """

    vmap_tasks: bool = field(default=False, metadata=RESULT_NEUTRAL)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="anil",
            factory="metaharness_plugins.algorithms._anil:ANIL",
            hparams=ANILHparams,
            task_kinds=frozenset({"classification"}),
            description="ANIL: MAML with an inner loop on the final Linear head only (body: outer loop)",
            paper="Raghu, Raghu, Bengio & Vinyals 2020, Rapid Learning or Feature Reuse? Towards "
                  "Understanding the Effectiveness of MAML (ICLR)",
            second_order=True,
        )
    ]


# The implementation lives in _anil.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._anil")
