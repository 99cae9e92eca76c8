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

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, check_ranges, forward_attributes, hookimpl


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
    vmap_tasks: bool = field(default=False, metadata=RESULT_NEUTRAL)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size", "fce_steps"), positive=("meta_lr",))


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="matchingnet",
            factory="metaharness_plugins.algorithms._matchingnet:MatchingNet",
            hparams=MatchingNetHparams,
            task_kinds=frozenset({"classification"}),
            description="Matching Networks: softmax attention over cosine similarities to the support set",
            paper="Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra 2016, Matching Networks for One Shot "
                  "Learning (NeurIPS)",
        )
    ]


# The implementation lives in _matchingnet.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._matchingnet")
