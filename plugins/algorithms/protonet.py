"""Prototypical Networks: Snell, Swersky & Zemel (2017), "Prototypical Networks for Few-shot Learning",
NeurIPS (arXiv:1703.05175).

A ProtoNet meta-learns an embedding f_phi. A task's prototypes are the mean embeddings of each
class's support examples, c_k = mean_{(x, y) in S, y = k} f_phi(x) (equation 1), and a query x is
classified by a softmax over negative squared Euclidean distances, -||f_phi(x) - c_k||^2 (equation 2).
The embedding is trained episodically with Adam on the query cross-entropy (algorithm 1). Nothing is
adapted by gradient at test time: `adapt` computes the prototypes, and `test_steps` is 0.

The embedding is the suite's model without its final Linear classifier (the suite's conv4 is
ProtoNets' embedding network, section 3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, forward_attributes, hookimpl
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class ProtoNetHparams(shared.ProtoNetHparams):
    """ProtoNets's settings (`shared.ProtoNetHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the episodes of a meta-batch with vmap rather than loop over them. Both give
        the same numbers; on CPU (one thread, Omniglot 5-way 1-shot 5-query, conv4, meta-batch 4) the
        loop was the faster (see the module's tests), so it is the default.
    """

    vmap_tasks: bool = field(default=False, metadata=RESULT_NEUTRAL)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="protonet",
            factory="metaharness_plugins.algorithms._protonet:ProtoNet",
            hparams=ProtoNetHparams,
            task_kinds=frozenset({"classification"}),
            description="Prototypical Networks: nearest class mean embedding, softmax over -squared distance",
            paper="Snell, Swersky & Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS)",
        )
    ]


# The implementation lives in _protonet.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._protonet")
