"""The "pretrained" baseline of Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML, section 5.1: one model trained on all tasks, then fine-tuned.

Meta-training is ordinary supervised learning on the pooled points of every task in the batch
(no inner loop, no notion of a task); at meta-test the pretrained weights are fine-tuned on the
task's support set with plain SGD. The paper compares MAML with this baseline (pretraining one
network on all tasks, then fine-tuning on the K points at test time with a tuned step size) to show
that the gain comes from meta-learning rather than from seeing the same data. On the sinusoid suite
it learns roughly the mean function of the tasks, and a few gradient steps move it little.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl


@dataclass(frozen=True)
class PretrainHparams:
    """lr: Adam's step size for pretraining (0.001, MAML's meta step size, for a like-for-like budget).
    meta_batch_size: tasks whose points are pooled into one training batch (25, as MAML's).
    inner_lr: SGD step size of test-time fine-tuning (the paper tuned it; 0.01 is MAML's alpha).
    test_steps: fine-tuning steps at meta-test (10, as in the paper's figure 2 and table).
    """

    lr: float = 0.001
    meta_batch_size: int = 25
    inner_lr: float = 0.01
    test_steps: int = 10

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size",), non_negative=("test_steps",),
                     positive=("lr", "inner_lr"))


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="pretrain",
            factory="metaharness_plugins.algorithms._pretrain:Pretrain",
            hparams=PretrainHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="baseline: pretrain one model on all tasks' pooled data, fine-tune with SGD at test",
            paper="Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning (ICML), section 5.1 baseline",
            second_order=False,
        )
    ]


# The implementation lives in _pretrain.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._pretrain")
