"""Reptile: Nichol, Achiam & Schulman (2018), "On First-Order Meta-Learning Algorithms"
(arXiv:1803.02999).

Reptile runs k steps of SGD on each task from the current initialisation phi, giving W_i, and
moves the initialisation towards the adapted weights: phi <- phi + epsilon * mean_i (W_i - phi)
(algorithm 2 of the paper, the batched version). No meta-gradient is back-propagated; the update
approximates first-order MAML plus a term that maximises within-task gradient agreement
(section 5 of the paper).

Choices for the harness ("the sine example" below is the sine-wave demo code the authors published
with the paper's OpenAI blog post):
- The inner optimiser is plain SGD, the same loop as test-time adaptation. The paper's few-shot
  classification runs use Adam in the inner loop; the sine example uses SGD.
- The outer step size epsilon is constant. The sine example starts at 0.1 and anneals it
  linearly to 0 over the run, which needs the total number of iterations, which an algorithm does
  not know here (the harness owns the outer loop and may stop early on a time limit).
- At meta-train each task's support and query points together are the task's data, trained on
  full-batch; at meta-test `adapt` sees only the support set.

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`, gradients come from `torch.func.grad`, and the tasks of a meta-batch are
vectorised with `torch.func.vmap` or looped over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, check_ranges, forward_attributes, hookimpl


@dataclass(frozen=True)
class ReptileHparams:
    """Defaults from the sine example unless said otherwise.

    inner_lr: SGD step size inside a task (0.02 in the sine example).
    inner_steps: SGD steps per task at meta-train (one epoch of 50 points in minibatches of 10,
        that is 5 steps, in the sine example; here each step is full-batch on support + query).
    outer_lr: the outer step size epsilon (0.1 at the start of the sine example, kept constant here).
    meta_batch_size: tasks per outer update. The sine example uses 1; 25 matches MAML's sinusoid
        protocol, so both see the same number of tasks per harness iteration.
    test_steps: SGD steps at meta-test, 10 like MAML's sinusoid evaluation.
    vmap_tasks: vectorise the tasks' inner loops with vmap rather than a Python loop (same numbers).
    """

    inner_lr: float = 0.02
    inner_steps: int = 5
    outer_lr: float = 0.1
    meta_batch_size: int = 25
    test_steps: int = 10
    vmap_tasks: bool = field(default=True, metadata=RESULT_NEUTRAL)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("inner_steps", "meta_batch_size"), non_negative=("test_steps",),
                     positive=("inner_lr",))
        if not 0 < self.outer_lr <= 1:
            raise ValueError(f"outer_lr must be in (0, 1] (an interpolation step), got {self.outer_lr!r}")


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="reptile",
            factory="metaharness_plugins.algorithms._reptile:Reptile",
            hparams=ReptileHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="Reptile: move the initialisation towards SGD-adapted task weights (first order)",
            paper="Nichol, Achiam & Schulman 2018, On First-Order Meta-Learning Algorithms (arXiv:1803.02999)",
            second_order=False,
        )
    ]


# The implementation lives in _reptile.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._reptile")
