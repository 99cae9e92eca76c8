"""The sinusoid suite itself (the `sinusoid` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite
from metaharness_plugins.backbones import activation

# Section 5.1 of the MAML paper: amplitude in [0.1, 5.0], phase in [0, pi], inputs drawn uniformly
# from [-5.0, 5.0] at training and at test time.
AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)
HIDDEN = 40  # section 5.1: the regressor has 2 hidden layers of size 40 with ReLU nonlinearities
INIT_STD = 0.01  # weight initialisation of the authors' released code (see build_model)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float32)


class SinusoidSuite(TaskSuite):
    """Sine waves with random amplitude and phase; a regression suite scored by MSE (lower is better)."""

    metric_name = "mse"
    metric_label = "MSE"
    higher_is_better = False

    def __init__(self, config: Any) -> None:
        """`config`: a `SinusoidConfig` (the `sinusoid` plugin's)."""
        super().__init__(config)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` sine-wave episodes; tensors are float32 on the CPU, shaped [n_tasks, points, 1]."""
        n_support, n_query = self.config.sizes(split)
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
        """The paper's regressor: 1-40-40-1 MLP with ReLU (`activation`: or tanh, softplus).

        With `init="maml"` it is initialised as in the authors' released code (cbfinn/maml,
        `construct_fc_weights`): every weight from a normal with standard deviation 0.01 truncated
        at two standard deviations, biases zero. The default, `init="torch"`, keeps PyTorch's
        initialisation, under which every bundled algorithm (Reptile included) learns quickly.
        """
        name = self.config.activation
        model = nn.Sequential(
            nn.Linear(1, HIDDEN),
            activation(name),
            nn.Linear(HIDDEN, HIDDEN),
            activation(name),
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
