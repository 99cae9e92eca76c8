"""The linear-regression suite itself (the `linear_regression` plugin registers it; imported when a cell
builds it)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite


class LinearRegressionSuite(TaskSuite):
    """Tasks y = w^T x + b with Gaussian w and b; a regression suite scored by query MSE (lower is better)."""

    metric_name = "mse"
    metric_label = "MSE"
    higher_is_better = False

    def __init__(self, config: Any) -> None:
        """`config`: a `LinearRegressionConfig` (the `linear_regression` plugin's)."""
        super().__init__(config)

    def inputs(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Input points of `shape` from the configured distribution (float32)."""
        scale = float(self.config.input_scale)
        if self.config.inputs == "normal":
            return scale * torch.randn(shape, generator=generator, dtype=torch.float32)
        return scale * (2.0 * torch.rand(shape, generator=generator, dtype=torch.float32) - 1.0)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        """`n_tasks` episodes, float32 on the CPU: x shaped [n_tasks, points, dim], y [n_tasks, points, 1]."""
        n_support, n_query = self.config.sizes(split)
        if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        d = self.config.dim
        # A fixed draw order (task parameters, support inputs, query inputs, then noise) makes an episode a
        # pure function of the generator's state and the sizes, and a noise level changes only the noise.
        weight = torch.randn((n_tasks, d, 1), generator=generator, dtype=torch.float32)
        bias = torch.randn((n_tasks, 1, 1), generator=generator, dtype=torch.float32)
        weight, bias = self.config.weight_scale * weight, self.config.bias_scale * bias
        support_x = self.inputs((n_tasks, n_support, d), generator)
        query_x = self.inputs((n_tasks, n_query, d), generator)
        noise = torch.randn((n_tasks, n_support, 1), generator=generator, dtype=torch.float32)
        support_y = support_x @ weight + bias + self.config.noise * noise
        return TaskBatch(support_x=support_x, support_y=support_y, query_x=query_x,
                         query_y=query_x @ weight + bias)

    def build_model(self) -> nn.Module:
        """The base learner: a ReLU MLP d-hidden[0]-...-1 (PyTorch's default initialisation), or with
        `model="linear"` a single nn.Linear(d, 1), the tasks' own model class."""
        widths = [self.config.dim, *(self.config.hidden if self.config.model == "mlp" else ())]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error (what inner loops and meta-training minimise)."""
        return F.mse_loss(prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the (noise-free) query targets."""
        return F.mse_loss(prediction, target)

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        info: dict[str, Any] = {"dim": cfg.dim, "test_shots": cfg.effective_test_shots, "noise": cfg.noise,
                                "weight_scale": cfg.weight_scale, "bias_scale": cfg.bias_scale,
                                "inputs": cfg.inputs, "input_scale": cfg.input_scale, "model": cfg.model}
        if cfg.model == "mlp":
            info["hidden"] = list(cfg.hidden)
        if cfg.bayes_lambda is not None:
            # Ridge with this penalty on every coefficient (bias included) is the posterior mean.
            info["bayes_ridge_lambda"] = cfg.bayes_lambda
        return info
