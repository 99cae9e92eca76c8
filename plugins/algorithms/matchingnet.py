"""Matching Networks: Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra (2016), "Matching Networks
for One Shot Learning", NeurIPS (arXiv:1606.04080).

A query x is labelled by attention over the support set, P(y | x, S) = sum_i a(x, x_i) y_i with
a(x, x_i) = softmax_i cos(f(x), g(x_i)) (equations 1-2), trained episodically on the query
log-likelihood. The embeddings f = g are the suite's model without its final Linear classifier (the
paper's Omniglot network is the same four-layer conv stack).

With full-context embeddings (`fce`, section 2.1.2 and appendix A.1/A.2) each support embedding is
read by a bidirectional LSTM over the support set, g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i), and each
query by an attention LSTM that takes K = `fce_steps` read steps over g(S):
    h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1});  h_k = h^_k + f'(x);
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i);  f(x, S) = h_K.
The LSTMs are written out (one Linear per cell) so that they run under torch.func.vmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import AlgorithmSpec, TaskSuite, check_ranges, hookimpl, split_classifier
from harness.functional import GradientAlgorithm


@dataclass(frozen=True)
class MatchingNetHparams:
    """Defaults: the paper's Omniglot set-up (section 4.1.1), Adam at the usual 1e-3.

    meta_lr: Adam's step size. The paper does not state one; 1e-3 is Adam's default and what the
        reference re-implementations use.
    meta_batch_size: episodes per Adam step (one episode at a time, as ProtoNets train).
    fce: full-context embeddings; the paper leaves them off on Omniglot ("FCE did not seem to help"
        there, section 4.1.1) and turns them on for mini-ImageNet.
    fce_steps: K, the attention LSTM's processing steps over the support set.
    vmap_tasks: vectorise the episodes of a meta-batch with vmap rather than loop over them; the loop
        was the faster on CPU for conv4 (see the module's tests), so it is the default.
    """

    meta_lr: float = 0.001
    meta_batch_size: int = 1
    fce: bool = False
    fce_steps: int = 5
    vmap_tasks: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size", "fce_steps"), positive=("meta_lr",))


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

    def __init__(self, hparams: MatchingNetHparams, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
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


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="matchingnet",
            factory=MatchingNet,
            hparams=MatchingNetHparams,
            task_kinds=frozenset({"classification"}),
            description="Matching Networks: softmax attention over cosine similarities to the support set",
            paper="Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, Matching Networks for One Shot "
                  "Learning (NeurIPS)",
        )
    ]
