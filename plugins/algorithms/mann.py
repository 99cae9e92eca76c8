"""Memory-augmented neural networks: Santoro, Bartunov, Botvinick, Wierstra & Lillicrap (2016), "Meta-Learning
with Memory-Augmented Neural Networks", ICML; content-based addressing after Graves, Wayne & Danihelka
(2014), "Neural Turing Machines" (arXiv:1410.5401).

A MANN reads an episode one example at a time. An LSTM controller gets the example, a label and the
previous memory reads, and emits one key k_t per read head. Memory M (slots x width) is read by content,
w_r(i) = softmax_i beta cos(k_t, M(i)), r_t = sum_i w_r(i) M(i), and written by least-recently-used
access (LRUA, section 3.2): usage w_u = gamma w_u_{t-1} + w_r + w_w; the least-used weights w_lu mark
the n smallest usages (n = number of read heads); the write weights interpolate the previous read and
least-used weights, w_w = sigmoid(alpha) w_r_{t-1} + (1 - sigmoid(alpha)) w_lu_{t-1}, with a learned
gate alpha; before the write the least-used slot is zeroed, then M(i) += w_w(i) k_t. The class logits
come from the controller's output and the reads.

In the harness the support set (in a fresh random order per meta-training episode, the suite's order at
test) is the sequence; each query is then one more step from the state after the support set,
independently of the other queries; the loss is the queries' cross-entropy (the paper scores every step
of long episodes; here the support steps have no target). The examples are the suite's conv4 embedding
of the image (the paper feeds raw pixels), the same embedding as SNAIL's and ProtoNets', so the rows
differ in the learner, not the features.

Label timing (`label_offset`): by default each support example is presented with its own label,
(x_t, y_t), and a query with a zero label, as in SNAIL's sequences. The paper offsets labels by one
time step, (x_t, y_{t-1}), so that the network must hold x_t until its label arrives; `label_offset =
true` does that (a query is then shown the last support label). Measured on a synthetic 5-way 1-shot
task (16-dimensional Gaussian classes, 16 episodes per step, the defaults otherwise; query accuracy on 200
test episodes): with the example 0.74 after 50 steps and 0.94 after 200; offset 0.21 after 200 and 0.33
after 400 (and still chance after 1,000 with the key strength starting at 0.69, below). With query-only
losses on one-shot episodes the offset binding is learnt far more slowly.

Key strength (`key_strength`): beta, a softplus of the controller's output (the Neural Turing Machine's
content addressing), is learnt by default, starting near 10; the paper's equation has beta = 1
(`key_strength = 0`), under which a softmax over cosines in [-1, 1] puts at most e^2 / (e^2 + 127), 5.5%,
on one of 128 slots. The start matters: a flat read averages every slot, carries no label, and learning
waits to leave that state. Measured on the synthetic task above (labels with the example, accuracy after
25, 50, ..., 200 steps): starting at softplus(0) = 0.69, 0.19 0.20 0.22 0.21 0.25 0.43 0.62 0.70;
starting at 10, 0.20 0.40 0.74 0.79 0.88 0.92 0.93 0.94.
With `memory = false` the external memory is removed: an LSTM meta-learner over the same labelled
sequence (the documented fallback, and an ablation of the memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl


@dataclass(frozen=True)
class MANNHparams:
    """Defaults are the paper's Omniglot settings except where said.

    controller: LSTM units (200).
    memory_slots, memory_width: the memory's size, 128 slots of 40.
    read_heads: read heads, also the number of least-used slots a write may go to (4).
    gamma: the usage decay of LRUA, in [0, 1] (0.95).
    key_strength: the initial value of the learned key strength beta that sharpens the content read
        (Graves et al. 2014); 0 fixes beta = 1, the paper's equation.
    memory: false drops the external memory (an LSTM over the labelled sequence).
    label_offset: show each example's label at the next step, as the paper does; false (the default, see
        the module docstring) shows it with the example, and a query with a zero label.
    meta_lr: Adam's step size (the paper trains with RMSProp at 1e-4 for 100,000 episodes; Adam at
        1e-3 suits harness budgets).
    meta_batch_size: episodes per step (16 in the paper).
    shuffle_support: a fresh random order of the support sequence in every meta-training episode.
    """

    controller: int = 200
    memory_slots: int = 128
    memory_width: int = 40
    read_heads: int = 4
    gamma: float = 0.95
    key_strength: float = 10.0
    memory: bool = True
    label_offset: bool = False
    meta_lr: float = 0.001
    meta_batch_size: int = 16
    shuffle_support: bool = True

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("controller", "memory_slots", "memory_width", "read_heads",
                                         "meta_batch_size"), non_negative=("key_strength",),
                     positive=("meta_lr",))
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1] (the usage decay), got {self.gamma!r}")
        if self.read_heads > self.memory_slots:
            raise ValueError(f"read_heads must be at most memory_slots ({self.memory_slots}): a write goes "
                             f"to the read_heads least-used slots; got {self.read_heads}")


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="mann",
            factory="metaharness_plugins.algorithms._mann:MANN",
            hparams=MANNHparams,
            task_kinds=frozenset({"classification"}),
            description="Memory-augmented network: LSTM controller, content-read / least-recently-used-write "
                        "memory over the labelled support sequence",
            paper="Santoro, Bartunov, Botvinick, Wierstra & Lillicrap 2016, Meta-Learning with "
                  "Memory-Augmented Neural Networks (ICML)",
        )
    ]


# The implementation lives in _mann.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._mann")
