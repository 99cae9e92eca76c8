"""Matching Networks themselves (the `matchingnet` plugin registers them; imported when a cell builds one)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import TaskSuite, split_classifier
from harness.functional import GradientAlgorithm


def cosine_attention(queries: Tensor, support: Tensor, labels: Tensor, classes: int) -> Tensor:
    """log P(y = k | x, S) = log sum_{i: y_i = k} softmax_i cos(x, s_i): [n_queries, classes] (eq. 1-2).

    Computed in log space (logsumexp over each class's support examples) so that it never takes the
    log of an underflowed probability; the rows are normalised log-probabilities.
    """
    cosine = F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T  # [q, s]
    log_attention = cosine.log_softmax(dim=-1)
    member = F.one_hot(labels, classes).to(torch.bool)  # [s, classes]
    masked = log_attention.unsqueeze(-1).masked_fill(~member, float("-inf"))  # [q, s, classes]
    return masked.logsumexp(dim=1)


class _LSTMCell(nn.Module):
    """A standard LSTM cell (gates i, f, g, o from one Linear over [input, hidden]); vmap-safe."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Linear(inputs + hidden, 4 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = self.gates(torch.cat([x, h], dim=-1)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class FullContextEmbedding(nn.Module):
    """g: a bidirectional LSTM over the support set; f: the attention LSTM with K read steps."""

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.forward_cell, self.backward_cell = _LSTMCell(dim, dim), _LSTMCell(dim, dim)
        # The paper's state [h_{k-1}, r_{k-1}] enters the gates linearly, exactly as r_{k-1} appended
        # to the input does; the cell's own hidden state stays dim wide so that h_k = h^_k + f'(x).
        self.query_cell = _LSTMCell(2 * dim, dim)

    def _run(self, cell: _LSTMCell, xs: torch.Tensor) -> torch.Tensor:
        h = c = xs.new_zeros(xs.shape[-1])
        out = []
        for x in xs:
            h, c = cell(x, h, c)
            out.append(h)
        return torch.stack(out)

    def support(self, g: torch.Tensor) -> torch.Tensor:
        """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i) for support embeddings g' [s, dim]."""
        return self._run(self.forward_cell, g) + self._run(self.backward_cell, g.flip(0)).flip(0) + g

    def query(self, f: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """f(x, S) = h_K for query embeddings f' [q, dim] attending over g(S) [s, dim]."""
        h = c = r = torch.zeros_like(f)
        for _ in range(self.steps):
            h, c = self.query_cell(torch.cat([f, r], dim=-1), h, c)
            h = h + f
            r = (h @ support.T).softmax(dim=-1) @ support
        return h


class MatchingNet(GradientAlgorithm):
    """Matching Networks on a classification suite whose model ends in a Linear classifier.

    The meta-parameters are the embedding's (and, with `fce`, the LSTMs'); a state is the encoded
    support set `{"support": g(S), "labels": y}`. Meta-training (`harness.functional.GradientAlgorithm`):
    Adam on the mean query loss over the batch's episodes, looped or vmapped.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        embedding, head = split_classifier(model, "matchingnet")
        net = nn.ModuleDict({"embedding": embedding})
        if hparams.fce:
            # In the model's dtype (float64 models get float64 LSTMs).
            net["fce"] = FullContextEmbedding(head.in_features, hparams.fce_steps).to(head.weight.dtype)
        super().__init__(hparams, net, suite, backend)
        self.classes = head.out_features
        self.net = self.model

    def _encode_support(self, x: torch.Tensor) -> torch.Tensor:
        g = self.net["embedding"](x)
        return self.net["fce"].support(g) if self.hparams.fce else g

    def _log_probs(self, support: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f = self.net["embedding"](x)
        if self.hparams.fce:
            f = self.net["fce"].query(f, support)
        return cosine_attention(f, support, labels, self.classes)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        # The suite's cross-entropy applies log_softmax, which leaves normalised log-probabilities
        # unchanged: it is the paper's negative log-likelihood.
        return self.suite.loss(self._log_probs(self._encode_support(sx), sy, qx), qy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[dict[str, Tensor]]:
        """The encoded support set, repeated steps+1 times: matching has no inner steps to take."""
        with torch.no_grad():
            state = {"support": self._encode_support(support_x), "labels": support_y}
        return [state] * (steps + 1)

    def predict(self, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities [n, ways] (argmax is the predicted class)."""
        return self._log_probs(state["support"], state["labels"], x)
