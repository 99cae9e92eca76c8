"""Prototypical Networks themselves (the `protonet` plugin registers them; imported when a cell builds one)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskSuite, split_classifier
from harness.functional import GradientAlgorithm


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

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
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
