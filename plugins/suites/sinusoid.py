"""Few-shot sinusoid regression, the toy task of Finn, Abbeel & Levine (2017), "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", ICML, section 5.1.

Each task is a sine wave y = A sin(x - phi) with amplitude A ~ U[0.1, 5.0] and phase
phi ~ U[0, pi]; inputs are x ~ U[-5, 5]. A task's K support points are what a learner adapts on,
its query points are what the adapted learner is scored on (mean squared error). The paper's model
is an MLP 1-40-40-1 with ReLU, meta-trained with K = 10; its table reports K = 5 and K = 10 at test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite, TaskSuiteSpec, hookimpl

# Section 5.1 of the MAML paper: amplitude in [0.1, 5.0], phase in [0, pi], inputs drawn uniformly
# from [-5.0, 5.0] at training and at test time.
AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)
HIDDEN = 40  # section 5.1: the regressor has 2 hidden layers of size 40 with ReLU nonlinearities
INIT_STD = 0.01  # weight initialisation of the authors' released code (see build_model)
# "torch": PyTorch's default nn.Linear initialisation; "maml": the MAML release's (see build_model).
INITS = ("torch", "maml")

SPLITS = ("train", "val", "test")
MAX_POINTS = 100_000  # support or query points per task: far past any study, short of exhausting memory


@dataclass(frozen=True)
class SinusoidConfig:
    """Episode sizes. `shots` is K at meta-train (and validation); `test_shots` is K at meta-test.

    The MAML paper meta-trains with K = 10 and reports K = 5 and K = 10 at test, so the two may
    differ; `test_shots=None` means "the same as `shots`". MSE is measured on the query points.
    """

    shots: int = 10
    test_shots: int | None = None
    query: int = 10
    test_query: int = 100
    init: str = "torch"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name in ("shots", "test_shots", "query", "test_query"):
            value = getattr(self, name)
            if name == "test_shots" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_POINTS:
                need = "K >= 1" if "shots" in name else "at least one query point per task"
                raise ValueError(f"{name} must be an integer from 1 to {MAX_POINTS:,} ({need}), got {value!r}")

    @property
    def effective_test_shots(self) -> int:
        """K at meta-test: `test_shots`, or `shots` when it is unset."""
        return self.shots if self.test_shots is None else self.test_shots


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float32)


class SinusoidSuite(TaskSuite):
    """Sine waves with random amplitude and phase; a regression suite scored by MSE (lower is better)."""

    metric_name = "mse"
    metric_label = "MSE"
    higher_is_better = False

    def __init__(self, config: SinusoidConfig | None = None) -> None:
        super().__init__(config if config is not None else SinusoidConfig())

    def sizes(self, split: str) -> tuple[int, int]:
        """(support points, query points) per task in `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if split == "test":
            return self.config.effective_test_shots, self.config.test_query
        return self.config.shots, self.config.query

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` sine-wave episodes; tensors are float32 on the CPU, shaped [n_tasks, points, 1]."""
        n_support, n_query = self.sizes(split)
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        # Draw in a fixed order (task parameters, then support, then query inputs) so that an episode
        # is a pure function of the generator's state and the sizes.
        amplitude = _uniform((n_tasks, 1, 1), *AMPLITUDE_RANGE, generator)
        phase = _uniform((n_tasks, 1, 1), *PHASE_RANGE, generator)
        support_x = _uniform((n_tasks, n_support, 1), *INPUT_RANGE, generator)
        query_x = _uniform((n_tasks, n_query, 1), *INPUT_RANGE, generator)
        return TaskBatch(
            support_x=support_x,
            support_y=amplitude * torch.sin(support_x - phase),
            query_x=query_x,
            query_y=amplitude * torch.sin(query_x - phase),
        )

    def build_model(self) -> nn.Module:
        """The paper's regressor: 1-40-40-1 MLP with ReLU.

        With `init="maml"` it is initialised as in the authors' released code (cbfinn/maml,
        `construct_fc_weights`): every weight from a normal with standard deviation 0.01 truncated
        at two standard deviations, biases zero. The default, `init="torch"`, keeps PyTorch's
        initialisation, under which every bundled algorithm (Reptile included) learns quickly.
        """
        model = nn.Sequential(
            nn.Linear(1, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 1),
        )
        for layer in model if self.config.init == "maml" else ():
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
                nn.init.zeros_(layer.bias)
        return model

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error, the paper's regression loss (section 3.1, equation 2)."""
        return F.mse_loss(prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the query points, as in the paper's figure 2 and table."""
        return F.mse_loss(prediction, target)

    def describe(self) -> dict[str, object]:
        return {
            "amplitude_range": list(AMPLITUDE_RANGE),
            "phase_range": list(PHASE_RANGE),
            "input_range": list(INPUT_RANGE),
            "test_shots": self.config.effective_test_shots,
        }


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="sinusoid",
            factory=SinusoidSuite,
            config=SinusoidConfig,
            task_kind="regression",
            description="K-shot sine-wave regression (amplitude U[0.1,5], phase U[0,pi], x U[-5,5]); MSE",
            paper="Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning (ICML), section 5.1",
        )
    ]
