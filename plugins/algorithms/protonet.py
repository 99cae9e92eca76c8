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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import AlgorithmSpec, TaskSuite, hookimpl, split_classifier
from harness.functional import GradientAlgorithm
from metaharness_plugins import hparams as shared


@dataclass(frozen=True)
class ProtoNetHparams(shared.ProtoNetHparams):
    """ProtoNets's settings (`shared.ProtoNetHparams`) and the native task loop's switch.

    vmap_tasks: vectorise the episodes of a meta-batch with vmap rather than loop over them. Both give
        the same numbers; on CPU (one thread, Omniglot 5-way 1-shot 5-query, conv4, meta-batch 4) the
        loop was the faster (see the module's tests), so it is the default.
    """

    vmap_tasks: bool = False


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Mean embedding of each class 0..classes-1: [classes, dim] (equation 1). vmap-safe."""
    onehot = F.one_hot(labels, classes).to(embeddings.dtype)  # [n, classes]
    return (onehot.T @ embeddings) / onehot.sum(0).clamp_min(1.0).unsqueeze(1)


def proto_logits(queries: torch.Tensor, protos: torch.Tensor, distance: str) -> torch.Tensor:
    """[n, classes] logits: minus squared Euclidean distances (equation 2), or cosine similarities."""
    if distance == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).T
    # ||q - c||^2 = ||q||^2 - 2 q.c + ||c||^2, one matrix product instead of an [n, classes, dim] tensor.
    sq = (queries * queries).sum(-1, keepdim=True) - 2 * queries @ protos.T + (protos * protos).sum(-1)
    return -sq


class ProtoNet(GradientAlgorithm):
    """Prototypical Networks on a classification suite whose model ends in a Linear classifier.

    The meta-parameters are the embedding's parameters (the classifier is dropped); a state is
    `{"prototypes": [ways, dim]}`. Meta-training (`harness.functional.GradientAlgorithm`): Adam on the
    mean query loss over the batch's episodes, looped or vmapped.
    """

    def __init__(self, hparams: ProtoNetHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        embedding, head = split_classifier(model, "protonet")
        super().__init__(hparams, embedding, suite, backend)
        self.classes = head.out_features
        self.embedding = self.model

    def _logits(self, protos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return proto_logits(self.embedding(x), protos, self.hparams.distance)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        # Support and query are embedded separately, as at test time (`adapt`, then `predict`), so
        # batch norm's batch statistics are computed the same way in training and testing.
        protos = prototypes(self.embedding(sx), sy, self.classes)
        return self.suite.loss(self._logits(protos, qx), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """[{"prototypes": ...}] repeated steps+1 times: prototypes have no inner steps to take."""
        with torch.no_grad():
            state = {"prototypes": prototypes(self.embedding(support_x), support_y, self.classes)}
        return [state] * (steps + 1)

    def predict(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self._logits(state["prototypes"], x)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="protonet",
            factory=ProtoNet,
            hparams=ProtoNetHparams,
            task_kinds=frozenset({"classification"}),
            description="Prototypical Networks: nearest class mean embedding, softmax over -squared distance",
            paper="Snell, Swersky & Zemel 2017, Prototypical Networks for Few-shot Learning (NeurIPS)",
        )
    ]
