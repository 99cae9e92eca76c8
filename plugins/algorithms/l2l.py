"""learn2learn's own implementations as harness algorithms: Arnold, Mahajan, Datta, Bunner & Zarkias
(2020), "learn2learn: A Library for Meta-Learning Research" (arXiv:2008.12284), and MetaOptNet: Lee,
Maji, Ravichandran & Soatto (2019), "Meta-Learning with Differentiable Convex Optimization", CVPR
(arXiv:1904.03758).

`l2l-maml`, `l2l-fomaml`, `l2l-metasgd`, `l2l-anil` and `l2l-protonet` do their real work with
learn2learn's classes (`learn2learn.algorithms.MAML` / `MetaSGD` with `clone()` and `adapt()`,
`learn2learn.nn.PrototypicalClassifier`), used as learn2learn's examples use them: a Python loop over
the tasks of a meta-batch, each task's query loss back-propagated as soon as it is computed, Adam as
the outer optimiser (that outer loop is `harness.functional.TaskLoopAlgorithm`). Their hyper-parameters have exactly the names, meanings and defaults of the
native `maml`, `fomaml`, `metasgd`, `anil` and `protonet` (less the native `vmap_tasks`, a switch of
the native implementation that learn2learn's module cloning has no counterpart for), so one grid
sweeps both alike and a leaderboard compares the two implementations on identical episodes.

`metaoptnet` fits learn2learn's `SVClassifier` (a Crammer-Singer multi-class SVM, solved as a QP by
qpth's differentiable interior-point solver) on each task's support embeddings and trains the
embedding end to end through the QP solution (section 3 of the paper); classification only.

learn2learn (and qpth) are imported inside the factories, so `harness list` stays fast and a missing
package marks these algorithms unavailable with an install hint rather than breaking the plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl
from metaharness_plugins._learn2learn import INSTALL_HINT
from metaharness_plugins.hparams import (
    ANILHparams,
    MetaSGDHparams,
    ProtoNetHparams,
    maml_specs,
)


@dataclass(frozen=True)
class MetaOptNetHparams:
    """MetaOptNet-SVM's head settings (section 4 of the paper and its released code), Adam outside.

    C_reg: the SVM's regularisation constant C, 0.1 in the paper's code (also learn2learn's default).
    max_iters: iterations of qpth's interior-point QP solver per fit (15: the paper's code and
        learn2learn's default), at meta-train and meta-test alike.
    learn_scale: multiply the SVM's logits by a meta-learned scalar, initialised at 1, as the paper's
        code does (`enable_scale`); the SVM's scores are small, and the softmax needs a temperature.
    meta_lr: Adam's step size, as for the other bundled algorithms (the paper trains a ResNet-12 with
        SGD and a step schedule over 60 epochs, far beyond the harness's budgets).
    meta_batch_size: episodes per update, 8 as in the paper's code.
    The paper's label smoothing (0.1) is not applied: every algorithm here trains on the suite's loss.
    """

    C_reg: float = 0.1
    max_iters: int = 15
    learn_scale: bool = True
    meta_lr: float = 0.001
    meta_batch_size: int = 8

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("max_iters", "meta_batch_size"), positive=("C_reg", "meta_lr"))


_L2L_PAPER = ("Arnold, Mahajan, Datta, Bunner & Zarkias 2020, learn2learn: A Library for Meta-Learning "
              "Research (arXiv:2008.12284)")


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    both, classification = frozenset({"regression", "classification"}), frozenset({"classification"})
    needs = ("learn2learn",)
    return [
        *maml_specs(
            "l2l-", "metaharness_plugins.algorithms._l2l:L2LMAML",
            "learn2learn's MAML (clone/adapt, second order), with the native maml's settings",
            "learn2learn's MAML with first_order=True, with the native fomaml's settings",
            paper=_L2L_PAPER, requires=needs, install_hint=INSTALL_HINT),
        AlgorithmSpec(
            name="l2l-metasgd",
            factory="metaharness_plugins.algorithms._l2l:L2LMetaSGD",
            hparams=MetaSGDHparams,
            task_kinds=both,
            description="learn2learn's MetaSGD (learned per-parameter step sizes); native metasgd's settings",
            paper=f"{_L2L_PAPER}; Li, Zhou, Chen & Li 2017 (arXiv:1707.09835)",
            second_order=True,
            requires=needs,
            install_hint=INSTALL_HINT,
        ),
        AlgorithmSpec(
            name="l2l-anil",
            factory="metaharness_plugins.algorithms._l2l:L2LANIL",
            hparams=ANILHparams,
            task_kinds=classification,
            description="learn2learn's MAML around the final Linear head only (ANIL), native anil's settings",
            paper=f"{_L2L_PAPER}; Raghu, Raghu, Bengio & Vinyals 2020 (ICLR)",
            second_order=True,
            requires=needs,
            install_hint=INSTALL_HINT,
        ),
        AlgorithmSpec(
            name="l2l-protonet",
            factory="metaharness_plugins.algorithms._l2l:L2LProtoNet",
            hparams=ProtoNetHparams,
            task_kinds=classification,
            description="learn2learn's PrototypicalClassifier on the embedding, native protonet's settings",
            paper=f"{_L2L_PAPER}; Snell, Swersky & Zemel 2017 (NeurIPS)",
            requires=needs,
            install_hint=INSTALL_HINT,
        ),
        AlgorithmSpec(
            name="metaoptnet",
            factory="metaharness_plugins.algorithms._l2l:MetaOptNet",
            hparams=MetaOptNetHparams,
            task_kinds=classification,
            description="MetaOptNet-SVM: learn2learn's SVClassifier (a qpth QP) on the embedding, end to end",
            paper="Lee, Maji, Ravichandran & Soatto 2019, Meta-Learning with Differentiable Convex "
                  "Optimization (CVPR)",
            requires=("learn2learn", "qpth"),
            install_hint=f"{INSTALL_HINT}; pip install qpth",
        ),
    ]


# The implementation lives in _l2l.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._l2l")
