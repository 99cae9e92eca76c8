"""The tuned hand-designed optimisers themselves (the `optimizers` plugin registers them; imported when a
cell builds one). Every update is torch.optim's; this module only runs it, tunes its learning rate on
meta-training problems, and snapshots the iterates."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from harness import Algorithm, TaskBatch
from harness.functional import Params, snapshot
from metaharness_plugins.optimisation import LOG_FLOOR, check_problem_suite


def run_scores(values: torch.Tensor, criterion: str) -> torch.Tensor:
    """Per-run tuning scores from losses [T + 1, ...] (steps first): mean or final log10 loss, +inf for a
    run whose loss was ever non-finite (a diverged run never wins, however it ends)."""
    logs = torch.log10(values.clamp_min(LOG_FLOOR))
    score = logs.mean(0) if criterion == "mean_log_loss" else logs[-1]
    return torch.where(torch.isfinite(values).all(0), score, torch.full_like(score, math.inf))


class TunedOptimizer(Algorithm):
    """A torch.optim optimiser as an "adaptation" algorithm: its states are the iterates theta_0..theta_T
    of one problem; meta-training tunes the learning rate over a log grid (see the plugin module)."""

    def __init__(self, hparams: Any, model: Any, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        check_problem_suite(type(self).__name__, suite)
        self.tuned = hparams.lr is None
        self.grid = torch.tensor(hparams.lr_grid() if self.tuned else (hparams.lr,), dtype=torch.float64)
        self.score_sums = torch.zeros(len(self.grid), dtype=torch.float64)
        self.problems_seen = 0
        # Before any tuning the rate is the grid's geometric middle; it is replaced at the first iteration.
        start = hparams.lr if not self.tuned else float(self.grid[len(self.grid) // 2])
        self.lr = torch.tensor(start, dtype=torch.float64)

    @property
    def test_steps(self) -> int:
        """The suite's test horizon T (the suite fixes the number of steps, not this algorithm)."""
        return int(self.suite.horizon("test"))

    def meta_parameters(self) -> dict[str, torch.Tensor]:
        return {"lr": self.lr}

    def make_optimizer(self, groups: Iterable[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        """torch.optim's optimiser over parameter groups (each may carry its own "lr")."""
        raise NotImplementedError

    def meta_train_step(self, batch: TaskBatch) -> float:
        """Run every grid learning rate for T = suite.horizon("train") steps on each of the batch's
        problems, add each rate's scores, choose the best rate so far; return its mean final loss here."""
        values = self.grid_losses(batch)  # [T + 1, rates, problems]
        if self.tuned:
            self.score_sums += run_scores(values, self.hparams.criterion).sum(-1)
            self.problems_seen += batch.num_tasks
            best = int(torch.argmin(self.score_sums))  # the first (smallest) rate among equals
            self.lr.fill_(float(self.grid[best]))
        else:
            best = 0
        return float(values[-1, best].mean())

    def grid_losses(self, batch: TaskBatch) -> torch.Tensor:
        """Losses [T + 1, rates, problems] of each grid rate on each problem, all in one torch.optim
        optimiser with one parameter group per rate whose tensors stack the problems (the four rules are
        elementwise, so this is the same as one optimiser per rate and problem), the objective batched
        over rates and problems with torch.func.vmap."""
        steps = int(self.suite.horizon("train"))
        starts = [self.suite.initial_parameters(batch.support_x[i]) for i in range(batch.num_tasks)]
        stacked = {k: torch.stack([s[k] for s in starts]) for k in starts[0]}
        leaves = [{k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()} for _ in self.grid]
        optimizer = self.make_optimizer([{"params": list(p.values()), "lr": float(lr)}
                                         for p, lr in zip(leaves, self.grid)], float(self.grid[0]))
        objective = torch.func.vmap(torch.func.vmap(self.suite.objective), in_dims=(0, None, None))
        x, y = batch.support_x, batch.support_y

        def losses() -> torch.Tensor:
            return objective({k: torch.stack([p[k] for p in leaves]) for k in stacked}, x, y)

        values = []
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                loss = losses()
                values.append(loss.detach())
                loss.sum().backward()  # problems and rates are independent: each leaf gets its own gradient
                optimizer.step()
        with torch.no_grad():
            values.append(losses())
        return torch.stack(values).to(torch.float64)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, steps: int) -> list[Params]:
        """theta_0 = suite.initial_parameters(support_x), then `steps` steps of the optimiser at the
        chosen rate on suite.objective; the steps + 1 iterates, detached."""
        return self.optimize(float(self.lr), support_x, support_y, steps)

    def optimize(self, lr: float, support_x: torch.Tensor, support_y: torch.Tensor, steps: int
                 ) -> list[Params]:
        """The iterates theta_0..theta_steps of this optimiser at learning rate `lr` on one problem."""
        with torch.enable_grad():  # the harness may evaluate under no_grad; the optimiser needs gradients
            params = {k: v.detach().clone().requires_grad_(True)
                      for k, v in self.suite.initial_parameters(support_x).items()}
            optimizer = self.make_optimizer([{"params": list(params.values())}], lr)
            states = [snapshot(params)]
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                self.suite.objective(params, support_x, support_y).backward()
                optimizer.step()
                states.append(snapshot(params))
        return states

    def predict(self, state: Params, x: torch.Tensor) -> torch.Tensor:
        """The optimisee's outputs at an iterate (the suite's `predict`)."""
        return self.suite.predict(state, x)

    def describe(self) -> dict[str, Any]:
        """The learning rate and how it was chosen; "chosen" (shown by the leaderboard) when tuned."""
        lr = float(self.lr)
        info: dict[str, Any] = {"lr": lr, "tuned": self.tuned}
        if self.tuned:
            means = (self.score_sums / max(1, self.problems_seen)).tolist()
            info.update({
                "chosen": {"lr": lr},
                "lr_grid": self.grid.tolist(),
                "criterion": self.hparams.criterion,
                # JSON has no infinity: a rate that diverged on some training problem is None.
                "grid_scores": [v if math.isfinite(v) else None for v in means],
                "tuning_problems": self.problems_seen,
                # A rate at the end of the grid may not be the best one: widen lr_min / lr_max.
                "at_grid_edge": len(self.grid) > 1 and lr in (float(self.grid[0]), float(self.grid[-1])),
                "tuned_on": "meta-training problems only; validation picks the checkpoint",
            })
        return info


class SGD(TunedOptimizer):
    """Plain gradient descent, torch.optim.SGD."""

    def make_optimizer(self, groups: Iterable[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(list(groups), lr=lr)


class Momentum(TunedOptimizer):
    """torch.optim.SGD with heavy-ball or Nesterov momentum."""

    def make_optimizer(self, groups: Iterable[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(list(groups), lr=lr, momentum=self.hparams.momentum,
                               nesterov=self.hparams.nesterov)


class RMSprop(TunedOptimizer):
    """torch.optim.RMSprop."""

    def make_optimizer(self, groups: Iterable[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(list(groups), lr=lr, alpha=self.hparams.alpha, eps=self.hparams.eps)


class Adam(TunedOptimizer):
    """torch.optim.Adam."""

    def make_optimizer(self, groups: Iterable[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(list(groups), lr=lr, betas=(self.hparams.beta1, self.hparams.beta2),
                                eps=self.hparams.eps)
