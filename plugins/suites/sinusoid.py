"""Few-shot sinusoid regression, the toy task of Finn, Abbeel & Levine (2017), "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", ICML, section 5.1.

Each task is a sine wave y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0] and phase
phi ~ U[0, pi]; inputs are x ~ U[-5, 5]. A task's K support points are what a learner adapts on,
its query points are what the adapted learner is scored on (mean squared error). The paper's model
is an MLP 1-40-40-1 with ReLU, meta-trained with K = 10; its table reports K = 5 and K = 10 at test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import ADDED_LATER, TaskSuiteSpec, forward_attributes, hookimpl
from metaharness_plugins.regression import EpisodeSizes, check_activation, check_sizes

# "torch": PyTorch's default nn.Linear initialisation; "maml": the MAML release's (see build_model).
INITS = ("torch", "maml")


@dataclass(frozen=True)
class SinusoidConfig(EpisodeSizes):
    """Episode sizes. `shots` is K at meta-train (and validation); `test_shots` is K at meta-test.

    The MAML paper meta-trains with K = 10 and reports K = 5 and K = 10 at test, so the two may
    differ; `test_shots=None` means "the same as `shots`". MSE is measured on the query points.
    `init` and `activation` choose the model's initialisation and hidden non-linearity (build_model);
    `activation` leaves the episodes unchanged.
    """

    shots: int = 10
    test_shots: int | None = None
    query: int = 10
    test_query: int = 100
    init: str = "torch"
    activation: str = field(default="relu", metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        # The paper's ReLU, or a smooth one: the loss is then smooth in the parameters, and a gradient flow
        # over them (ode-maml's inner loop) has a continuous vector field.
        check_activation(self.activation)
        check_sizes(self)


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="sinusoid",
            factory="metaharness_plugins.suites._sinusoid:SinusoidSuite",
            config=SinusoidConfig,
            task_kind="regression",
            episode_neutral=("activation",),
            description="K-shot sine-wave regression (amplitude U[0.1,5], phase U[0,pi], x U[-5,5]); MSE",
            paper="Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning (ICML), section 5.1",
        )
    ]


# The implementation lives in _sinusoid.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._sinusoid")
