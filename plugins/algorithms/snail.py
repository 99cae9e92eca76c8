"""SNAIL: Mishra, Rohaninejad, Chen & Abbeel (2018), "A Simple Neural Attentive Meta-Learner", ICLR
(arXiv:1707.03141).

SNAIL reads an episode as a sequence: the support examples, each its embedding concatenated with its
one-hot label, then the query with its label zeroed; it predicts the query's label at the last position.
The sequence model interleaves temporal-convolution blocks (dense blocks of kernel-2 causal convolutions
with dilations 1, 2, 4, ..., gated tanh x sigmoid, their outputs concatenated onto their inputs) and
causal soft-attention blocks (key / value projections, softmax over the positions up to the current
one, the read concatenated onto the input), then a 1x1 convolution to the class logits. The paper's
Omniglot architecture (appendix) is AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128),
TCBlock(T, 128), AttentionBlock(512, 256), with T = N K + 1 and ceil(log2 T) dense blocks per TC block;
the defaults are those sizes, and `key_size`, `value_size` and `tc_filters` scale them (the later
attention blocks have 4x and 8x the first one's sizes, as in the paper).

The embedding is the suite's model without its final Linear classifier: conv4, the paper's Omniglot
embedding (four 3x3 conv 64 / batch norm / ReLU / 2x2 max-pool blocks). Every query is classified from
the whole support sequence before it and nothing else: the support positions' activations do not
depend on any query (the network is causal), so they are computed once per episode (`adapt`: that is
the state) and every query is then the sequence's next position, independently of the other queries;
a test checks this equals running each [support, query] sequence through the whole network.
At meta-train the support sequence is put in a fresh random order per episode (`shuffle_support`), as
the paper's episodes present examples in random order; at meta-test the suite's order is kept, so
every cell sees the same sequences. Trained by the query cross-entropy, with Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl


@dataclass(frozen=True)
class SNAILHparams:
    """Sizes default to the paper's Omniglot architecture (appendix, see the module docstring).

    tc_filters: filters of every dense block of the two TC blocks (128).
    key_size: key (and query) size of the first attention block (64); the second and third have 4x and
        8x it (256, 512).
    value_size: value size of the first attention block (32); then 4x and 8x (128, 256).
    meta_lr: Adam's step size (Adam's default, 1e-3).
    meta_batch_size: episodes per Adam step.
    shuffle_support: present the support examples in a fresh random order in every meta-training
        episode; at meta-test the suite's order is kept.
    """

    tc_filters: int = 128
    key_size: int = 64
    value_size: int = 32
    meta_lr: float = 0.001
    meta_batch_size: int = 8
    shuffle_support: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("tc_filters", "key_size", "value_size", "meta_batch_size"),
                     positive=("meta_lr",))


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="snail",
            factory="metaharness_plugins.algorithms._snail:SNAIL",
            hparams=SNAILHparams,
            task_kinds=frozenset({"classification"}),
            description="SNAIL: temporal convolutions and causal attention over the labelled support "
                        "sequence, then the query",
            paper="Mishra, Rohaninejad, Chen & Abbeel 2018, A Simple Neural Attentive Meta-Learner (ICLR)",
        )
    ]


# The implementation lives in _snail.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._snail")
