"""The memory-augmented network itself (the `mann` plugin registers it; imported when a cell builds one)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaharness_plugins.fewshot.sequence import SequenceLearner

State = dict[str, Tensor]


def cosine(keys: Tensor, memory: Tensor, eps: float = 1e-8) -> Tensor:
    """K(k, M(i)) = k . M(i) / (|k| |M(i)|) for keys [B, heads, width] and memory [B, slots, width]:
    [B, heads, slots]. The eps inside the root keeps it (and its gradient) finite at an all-zero slot."""
    dots = keys @ memory.transpose(-1, -2)
    norms = ((keys * keys).sum(-1, keepdim=True) + eps) * ((memory * memory).sum(-1).unsqueeze(-2) + eps)
    return dots / norms.sqrt()


def least_used(usage: Tensor, n: int) -> Tensor:
    """w_lu: 1 at the n slots of smallest usage, 0 elsewhere ([B, slots]); ties go to the lower index."""
    order = torch.argsort(usage, dim=-1, stable=True)[..., :n]
    return torch.zeros_like(usage).scatter(-1, order, 1.0)


class MANNNet(nn.Module):
    """The controller, memory and output layer, stepped over a batch of sequences (see the plugin docstring).

    A state holds the controller's (h, c), the previous label's one-hot ("label": the offset input of the
    next step) and, with memory, the memory [B, slots, width], the previous reads, read weights [B, heads,
    slots], usage and least-used weights [B, slots].
    """

    def __init__(self, dim: int, ways: int, controller: int, slots: int, width: int, heads: int, gamma: float,
                 key_strength: float, memory: bool, label_offset: bool) -> None:
        super().__init__()
        self.slots, self.width, self.heads, self.gamma = slots, width, heads, gamma
        self.memory, self.key_strength, self.label_offset = memory, key_strength, label_offset
        reads = heads * width if memory else 0
        self.cell = nn.LSTMCell(dim + ways + reads, controller)
        if memory:
            # Per head: a key (width), the write gate alpha, and the key strength beta when learned.
            self.interface = nn.Linear(controller, heads * (width + 1 + int(key_strength > 0)))
            if key_strength > 0:
                # beta = softplus(.) starts near `key_strength`: a sharp read from the first step, so the
                # reads carry the matching slot's content and its gradient (a flat read averages every
                # slot, and learning waits, sometimes for thousands of episodes, to leave that state).
                with torch.no_grad():
                    # softplus^-1(k) = k + log(1 - e^-k), finite for every k > 0 (log(expm1(k)) overflows)
                    self.interface.bias.view(heads, -1)[:, width + 1] = key_strength + math.log(-math.expm1(-key_strength))
        self.out = nn.Linear(controller + reads, ways)

    def initial(self, batch: int, ways: int, like: Tensor) -> State:
        """The state before the first step: zeros everywhere, and the first `heads` slots least used."""
        zeros = like.new_zeros
        state = {"h": zeros(batch, self.cell.hidden_size), "c": zeros(batch, self.cell.hidden_size),
                 "label": zeros(batch, ways)}
        if self.memory:
            usage = zeros(batch, self.slots)
            state.update(memory=zeros(batch, self.slots, self.width),
                         reads=zeros(batch, self.heads * self.width),
                         w_read=zeros(batch, self.heads, self.slots), usage=usage,
                         least_used=least_used(usage, self.heads))
        return state

    def address(self, state: State, keys: Tensor, alpha: Tensor, beta: Tensor) -> State:
        """One LRUA write then content read (Santoro et al. 2016, section 3.2) for keys [B, heads, width],
        write gates alpha and key strengths beta [B, heads]; returns the memory part of the new state."""
        gate = torch.sigmoid(alpha).unsqueeze(-1)
        w_write = gate * state["w_read"] + (1 - gate) * state["least_used"].unsqueeze(-2)
        # "Prior to writing to memory, the least used memory location is computed from w_u_{t-1} and is set
        # to zero": the slot of smallest previous usage.
        oldest = F.one_hot(state["usage"].argmin(dim=-1), self.slots).to(keys.dtype)
        memory = state["memory"] * (1 - oldest).unsqueeze(-1) + w_write.transpose(-1, -2) @ keys
        w_read = (beta.unsqueeze(-1) * cosine(keys, memory)).softmax(dim=-1)
        usage = self.gamma * state["usage"] + w_read.sum(-2) + w_write.sum(-2)
        return {"memory": memory, "reads": (w_read @ memory).flatten(-2), "w_read": w_read, "usage": usage,
                "least_used": least_used(usage, self.heads)}

    def step(self, state: State, x: Tensor, label: Tensor) -> tuple[State, Tensor]:
        """Read example x [B, dim] and `label` [B, ways], x's own one-hot label (zeros for a query). With
        `label_offset` the network is shown the previous step's label (from the state) and x's is kept for
        the next step; otherwise it is shown x's own. Returns (new state, logits [B, ways] for x)."""
        shown = state["label"] if self.label_offset else label
        inputs = [x, shown] + ([state["reads"]] if self.memory else [])
        h, c = self.cell(torch.cat(inputs, dim=-1), (state["h"], state["c"]))
        new = {"h": h, "c": c, "label": label}
        if not self.memory:
            return new, self.out(h)
        interface = self.interface(h).view(*h.shape[:-1], self.heads, -1)
        keys, alpha = interface[..., : self.width], interface[..., self.width]
        beta = F.softplus(interface[..., self.width + 1]) if self.key_strength > 0 else torch.ones_like(alpha)
        new.update(self.address(state, keys, alpha, beta))
        return new, self.out(torch.cat([h, new["reads"]], dim=-1))


class MANN(SequenceLearner):
    """A memory-augmented network (or, with `memory = false`, an LSTM) on a classification suite whose
    model ends in a Linear classifier; a state is the network's state after the support sequence."""

    name = "mann"

    def build_sequence(self, h: Any, dim: int, ways: int, support_length: int) -> nn.Module:
        return MANNNet(dim, ways, h.controller, h.memory_slots, h.memory_width, h.read_heads, h.gamma,
                       h.key_strength, h.memory, h.label_offset)

    def encode_support(self, support: Tensor, labels: Tensor) -> State:
        net = self.net["sequence"]
        state = net.initial(support.shape[0], self.ways, support)
        onehot = self.one_hot(labels, support)
        for t in range(support.shape[1]):
            state, _ = net.step(state, support[:, t], onehot[:, t])
        return state

    def classify(self, state: State, queries: Tensor) -> Tensor:
        batch, count = queries.shape[:2]
        # Every query is the next step after the support sequence, on its own copy of the state; with
        # offset labels it is shown the last support label (held in the state), otherwise zeros.
        copies = {k: v.unsqueeze(1).expand(batch, count, *v.shape[1:]).reshape(batch * count, *v.shape[1:])
                  for k, v in state.items()}
        flat = queries.reshape(batch * count, -1)
        _, logits = self.net["sequence"].step(copies, flat, flat.new_zeros(batch * count, self.ways))
        return logits.view(batch, count, self.ways)

    def describe(self) -> dict[str, Any]:
        h = self.hparams
        labels = ("offset by one time step (the input at step t is x_t with y_{t-1})" if h.label_offset else
                  "presented with their example (x_t with y_t; a query with zeros)")
        return {"memory": h.memory, "key_strength": h.key_strength if h.memory else None, "labels": labels}
