"""SNAIL itself (the `snail` plugin registers it; imported when a cell builds one), and `SequenceLearner`,
the base of the model-based learners that read an episode as a sequence of labelled support examples
(SNAIL here, the memory-augmented network in `_mann`)."""

from __future__ import annotations

import math
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


# --- SNAIL's building blocks -------------------------------------------------------------------------
# Each block maps a sequence [B, T, C] to [B, T, C + added] (its output concatenated onto its input, the
# paper's dense connections), causally: position t reads positions <= t only. `tail` computes the next
# position after a prefix for many candidates at once: `prefix` [B, S, C_final] is the network's last
# features of the prefix, whose first C channels are this block's input there (dense concatenation keeps
# every block's input as the leading channels of everything after it); `x` [B, Q, C] holds Q candidates
# for position S, each independent of the others.


class DenseBlock(nn.Module):
    """DenseBlock(dilation, filters): a kernel-2 causal convolution of the positions t - dilation and t,
    gated tanh(xf) * sigmoid(xg) (the paper's appendix), `filters` channels appended."""

    def __init__(self, channels: int, filters: int, dilation: int) -> None:
        super().__init__()
        self.channels, self.added, self.dilation = channels, filters, dilation
        # A kernel-2 convolution is one affine map of the two taps: [x_{t-d}, x_t] -> [xf, xg].
        self.conv = nn.Linear(2 * channels, 2 * filters)

    def _gate(self, earlier: Tensor, current: Tensor) -> Tensor:
        xf, xg = self.conv(torch.cat([earlier, current], dim=-1)).chunk(2, dim=-1)
        return torch.cat([current, torch.tanh(xf) * torch.sigmoid(xg)], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        # Zeros before the first position: causal padding.
        earlier = F.pad(x, (0, 0, self.dilation, 0))[..., : x.shape[-2], :]
        return self._gate(earlier, x)

    def tail(self, prefix: Tensor, x: Tensor) -> Tensor:
        position = prefix.shape[-2] - self.dilation
        if position < 0:
            earlier = torch.zeros_like(x)
        else:
            earlier = prefix[..., position : position + 1, : self.channels].expand_as(x)
        return self._gate(earlier, x)


class AttentionBlock(nn.Module):
    """AttentionBlock(key_size, value_size): single-head causal soft attention, softmax(q k^T /
    sqrt(key_size)) over positions <= t, the read (`value_size` channels) appended."""

    def __init__(self, channels: int, key_size: int, value_size: int) -> None:
        super().__init__()
        self.channels, self.added = channels, value_size
        self.query, self.key, self.value = (nn.Linear(channels, key_size), nn.Linear(channels, key_size),
                                            nn.Linear(channels, value_size))
        self.scale = 1.0 / math.sqrt(key_size)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-2]
        logits = self.query(x) @ self.key(x).transpose(-1, -2) * self.scale
        later = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        probs = logits.masked_fill(later, float("-inf")).softmax(dim=-1)
        return torch.cat([x, probs @ self.value(x)], dim=-1)

    def tail(self, prefix: Tensor, x: Tensor) -> Tensor:
        earlier = prefix[..., : self.channels]
        q, own_key, own_value = self.query(x), self.key(x), self.value(x)
        logits = torch.cat([q @ self.key(earlier).transpose(-1, -2), (q * own_key).sum(-1, keepdim=True)],
                           dim=-1)
        probs = (logits * self.scale).softmax(dim=-1)  # over the S prefix positions and the position itself
        read = probs[..., :-1] @ self.value(earlier) + probs[..., -1:] * own_value
        return torch.cat([x, read], dim=-1)


def dense_blocks(length: int) -> int:
    """Dense blocks in a TC block for sequences of `length`: ceil(log2 length), so that the dilations
    1, 2, ..., 2^(L-1) reach back over the whole sequence."""
    return max(1, math.ceil(math.log2(length)))


class SNAILNet(nn.Module):
    """Attention(k, v), TC, Attention(4k, 4v), TC, Attention(8k, 8v), then a 1x1 convolution to the logits
    (the paper's Omniglot architecture with k = 64, v = 32, 128 filters)."""

    def __init__(self, inputs: int, ways: int, length: int, filters: int, key_size: int,
                 value_size: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        channels = inputs

        def add(block: nn.Module) -> None:
            nonlocal channels
            blocks.append(block)
            channels += block.added

        for scale, tc in ((1, True), (4, True), (8, False)):
            add(AttentionBlock(channels, scale * key_size, scale * value_size))
            for i in range(dense_blocks(length) if tc else 0):
                add(DenseBlock(channels, filters, 2**i))
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Linear(channels, ways)

    def features(self, sequence: Tensor) -> Tensor:
        """The last block's output [B, T, C_final] of input sequences [B, T, inputs], causally."""
        for block in self.blocks:
            sequence = block(sequence)
        return sequence

    def forward(self, sequence: Tensor) -> Tensor:
        """Logits at every position [B, T, ways]."""
        return self.out(self.features(sequence))

    def tail(self, prefix: Tensor, x: Tensor) -> Tensor:
        """Logits [B, Q, ways] of Q candidate inputs [B, Q, inputs], each the position after `prefix`'s
        S positions (their `features`), as if each were appended to the prefix alone."""
        for block in self.blocks:
            x = block.tail(prefix, x)
        return self.out(x)


class SNAIL(SequenceLearner):
    """SNAIL on a classification suite whose model ends in a Linear classifier. A state is the support
    sequence's features `{"prefix": [1, S, C_final]}`; see the plugin's docstring."""

    name = "snail"

    def build_sequence(self, h: Any, dim: int, ways: int, support_length: int) -> nn.Module:
        return SNAILNet(dim + ways, ways, support_length + 1, h.tc_filters, h.key_size, h.value_size)

    def encode_support(self, support: Tensor, labels: Tensor) -> dict[str, Tensor]:
        sequence = torch.cat([support, self.one_hot(labels, support)], dim=-1)
        return {"prefix": self.net["sequence"].features(sequence)}

    def classify(self, state: dict[str, Tensor], queries: Tensor) -> Tensor:
        blank = queries.new_zeros(*queries.shape[:-1], self.ways)  # the query's label is unknown: zeros
        return self.net["sequence"].tail(state["prefix"], torch.cat([queries, blank], dim=-1))

    def describe(self) -> dict[str, Any]:
        net = self.net["sequence"]
        length = self.support_length + 1
        return {"sequence_length": length, "dense_blocks_per_tc": dense_blocks(length),
                "channels": net.out.in_features}
