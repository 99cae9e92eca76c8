"""SNAIL itself (the `snail` plugin registers it; imported when a cell builds one), on the sequence-learner
base it shares with the memory-augmented network (`metaharness_plugins.fewshot.sequence`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaharness_plugins.fewshot.sequence import SequenceLearner

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
