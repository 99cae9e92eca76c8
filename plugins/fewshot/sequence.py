"""`SequenceLearner`, the base of the model-based few-shot learners that read an episode as a sequence of
labelled support examples followed by the query (SNAIL, the memory-augmented network): a helper module
that defines no hooks, shared by those algorithm plugins."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskBatch, TaskSuite, split_classifier
from harness.functional import GradientAlgorithm


class SequenceLearner(GradientAlgorithm):
    """A meta-learner that classifies queries from the sequence of the embedded, labelled support set.

    The suite's classification model is split into an embedding (everything before its last Linear)
    and the classifier, which is dropped: `build_sequence(hparams, dim, ways, support_length)` makes the
    sequence model that replaces it. A subclass turns embedded support examples and their labels into a state
    (`encode_support`) and classifies embedded queries from that state (`classify`), both batched over
    episodes. Each episode's support and query images are embedded separately, at meta-train as at test
    (`adapt`, then `predict`), so batch norm's batch statistics are computed alike.
    """

    name: ClassVar[str] = ""

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        embedding, head = split_classifier(model, self.name)
        # The support length sizes the sequence model (SNAIL's dilations); one training episode, drawn with
        # a generator of its own so the cell's random streams are untouched, tells it.
        probe = suite.sample(1, torch.Generator().manual_seed(0), "train")
        self.ways, self.support_length = head.out_features, int(probe.support_y.shape[1])
        sequence = self.build_sequence(hparams, head.in_features, self.ways, self.support_length)
        net = nn.ModuleDict({"embedding": embedding, "sequence": sequence.to(head.weight.dtype)})
        super().__init__(hparams, net, suite, backend)
        self.net = self.model

    def build_sequence(self, hparams: Any, dim: int, ways: int, support_length: int) -> nn.Module:
        """The sequence model over embeddings of width `dim` with `ways` classes (called before the base's
        `__init__`: `hparams` is passed, `self.hparams` is not set yet)."""
        raise NotImplementedError

    def encode_support(self, support: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """The state after reading the support sequences: embeddings [B, S, dim], labels [B, S]."""
        raise NotImplementedError

    def classify(self, state: dict[str, Tensor], queries: Tensor) -> Tensor:
        """Logits [B, Q, ways] of embedded queries [B, Q, dim], each read after its episode's support."""
        raise NotImplementedError

    def one_hot(self, labels: Tensor, like: Tensor) -> Tensor:
        """Labels [..., S] as one-hot vectors [..., S, ways] in the dtype of `like`."""
        return F.one_hot(labels, self.ways).to(like.dtype)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean query loss over the batch's episodes, their sequences run as one batch."""
        embed = self.net["embedding"]
        supports, labels, queries = [], [], []
        for i in range(batch.num_tasks):
            sx, sy = batch.support_x[i], batch.support_y[i]
            if self.hparams.shuffle_support:  # a fresh order per episode (torch's RNG, seeded per cell)
                order = torch.randperm(sy.shape[0], device=sy.device)
                sx, sy = sx[order], sy[order]
            supports.append(embed(sx))
            labels.append(sy)
            queries.append(embed(batch.query_x[i]))
        state = self.encode_support(torch.stack(supports), torch.stack(labels))
        logits = self.classify(state, torch.stack(queries))
        losses = [self.suite.loss(logits[i], batch.query_y[i]) for i in range(batch.num_tasks)]
        return torch.stack(losses).mean()

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """The state after reading the support sequence (in the suite's order), repeated steps+1 times:
        a model-based learner takes no gradient steps."""
        with torch.no_grad():
            state = self.encode_support(self.net["embedding"](support_x).unsqueeze(0), support_y.unsqueeze(0))
        return [state] * (steps + 1)

    def predict(self, state: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits [n, ways] of the queries `x`, each classified after the support sequence alone."""
        return self.classify(state, self.net["embedding"](x).unsqueeze(0))[0]
