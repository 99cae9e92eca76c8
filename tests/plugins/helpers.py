"""Helpers shared by the algorithm plugins' tests: a tiny classification suite, the real Omniglot data, and
a finite-difference check of a meta-gradient."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import TaskBatch, TaskSuite

#: The Omniglot small background sets shipped beside the repository.
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
ARCHIVES = ("images_background_small1.zip", "images_background_small2.zip")


def require_omniglot() -> None:
    """Skip the calling test when the real Omniglot small sets are not beside the repository."""
    if not all((DATA / name).is_file() for name in ARCHIVES):
        pytest.skip(f"the Omniglot small background sets are not in {DATA}")


def assert_meta_gradient_matches_central_differences(algo: Any, batch: TaskBatch, h: float = 1e-6) -> int:
    """Every entry of `algo.meta_gradient(batch)` (float64) against (L(p + h) - L(p - h)) / 2h of
    `algo.meta_loss(batch)`, one meta-parameter entry at a time; returns how many entries were checked."""
    _, grads = algo.meta_gradient(batch)
    checked = 0
    with torch.no_grad():
        for name, param in algo.meta_parameters().items():
            flat = param.view(-1)
            for i in range(flat.numel()):
                saved = float(flat[i])
                flat[i] = saved + h
                up = float(algo.meta_loss(batch))
                flat[i] = saved - h
                down = float(algo.meta_loss(batch))
                flat[i] = saved
                assert grads[name].view(-1)[i].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)
                checked += 1
    return checked


class TinySuite(TaskSuite):
    """3-way classification of 4-dimensional vectors: just the loss and metric the algorithm uses.

    `SUPPORT_LABELS` are the support set's labels (a subclass may make the classes unbalanced);
    the query set holds each class twice.
    """

    kind, metric_name, higher_is_better = "classification", "accuracy", True
    SUPPORT_LABELS: tuple[int, ...] = (0, 1, 2, 0, 1, 2)

    def sample(self, n_tasks: int, generator: torch.Generator, split: str) -> TaskBatch:
        sy = torch.tensor(self.SUPPORT_LABELS).expand(n_tasks, -1)
        qy = torch.arange(3).repeat(2).expand(n_tasks, -1)
        return TaskBatch(torch.randn(n_tasks, len(self.SUPPORT_LABELS), 4, generator=generator, dtype=torch.float64),
                         sy.clone(), torch.randn(n_tasks, 6, 4, generator=generator, dtype=torch.float64), qy.clone())

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target)

    def metric(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (prediction.argmax(-1) == target).float().mean()
