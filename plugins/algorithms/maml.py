"""Model-Agnostic Meta-Learning and its first-order approximation: Finn, Abbeel & Levine (2017),
"Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML (arXiv:1703.03400).

MAML meta-learns an initialisation theta such that a few steps of SGD on a task's support set,
theta'_i = theta - alpha * grad L_support(theta), give a low loss on that task's query set; the
meta-objective sum_i L_query(theta'_i) is minimised with Adam by differentiating through the inner
steps (algorithm 2 of the paper). First-order MAML (section 5.2) treats the inner gradients as
constants, which drops the second-derivative (Hessian-vector) terms from the meta-gradient.

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`, the inner gradient is `torch.func.grad`, and tasks of a meta-batch are
vectorised with `torch.func.vmap` or looped over. Looping over the tasks of a conv net on the CPU,
meta-training runs the model through `harness.sequential` (channels-last activations, pooling before
ReLU, written-out second derivatives of convolution and batch norm: the same meta-gradient in float64)
with `torch.autograd` inner gradients; benchmarks/test_bench_maml.py times it against learn2learn's.
Test-time adaptation always takes the plain `functional_call` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class MAMLHparams(shared.MAMLHparams):
    """MAML's settings (`shared.MAMLHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the tasks of a meta-batch with vmap rather than loop over them in Python.
        Both compute the same meta-gradient (up to float rounding, so long runs drift apart as
        seeds do); on CPU, sinusoid MLP, meta-batch 25, vmap measured 3.1 ms per
        iteration against 34 ms for the loop (fomaml 2.4 ms against 23 ms).
    """

    vmap_tasks: bool = field(default=True, metadata=RESULT_NEUTRAL)


@dataclass(frozen=True)
class FOMAMLHparams(MAMLHparams):
    """First-order MAML: the same settings as MAML with the second-order terms dropped."""

    first_order: bool = True


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return shared.maml_specs(
        "", "metaharness_plugins.algorithms._maml:MAML",
        "MAML: meta-learned initialisation, differentiating through inner SGD (second order)",
        "first-order MAML: MAML with the inner gradients treated as constants",
        hparams=(MAMLHparams, FOMAMLHparams))


# The implementation lives in _maml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._maml")
