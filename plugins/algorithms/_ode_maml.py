"""ODE-MAML itself, on harness.functional and torchdiffeq (the `ode-maml` plugin registers it; imported when a
cell builds it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torchdiffeq
from torch import Tensor, nn

from harness import TaskSuite
from harness.functional import GradientAlgorithm, Params, gradients, snapshot
from harness.specs import TaskBatch

#: The meta-parameter holding log T when the horizon is learned.
LOG_HORIZON = "log_horizon"
FIXED_STEP_SOLVERS = ("euler", "rk4")
State = tuple[Tensor, ...]


def uniform_grid(start: Tensor, end: Tensor, steps: int) -> Tensor:
    """`steps` + 1 equally spaced times from `start` to `end`, both exactly (torchdiffeq checks the grid's
    ends), differentiable in `end` (a learned horizon)."""
    fractions = torch.arange(steps, dtype=end.dtype, device=end.device) / steps
    return torch.cat([start + (end - start) * fractions, end.reshape(1)])


class FlowCounter:
    """Function evaluations of the flow, counted per task: a call on a batch of n tasks counts n."""

    def __init__(self) -> None:
        self.evaluations = 0

    def __call__(self, tasks: int) -> None:
        self.evaluations += tasks


class ODEMAML(GradientAlgorithm):
    """MAML whose adaptation is the gradient flow d theta/dt = -grad L_support(theta) over a horizon T.

    The meta-parameters are the model's `nn.Parameter`s, and log T with `learn_horizon`. Adaptation never
    modifies them: the ODE's state is a tuple of tensors, one per parameter (stacked over tasks when the
    meta-batch is integrated as one ODE), evaluated with `functional_call`.
    """

    second_order = True

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.names = list(self.params)
        self.dtype = next(iter(self.params.values())).dtype
        self.log_horizon: nn.Parameter | None = None
        if hparams.learn_horizon:
            self.log_horizon = nn.Parameter(
                torch.tensor(math.log(hparams.horizon), dtype=self.dtype, device=self.device)
            )
        self.counter = FlowCounter()
        # Per-task NFE sums and task counts: meta-train forward solves, adjoint backward solves, adaptations.
        self.nfe = {"meta_train": [0, 0], "meta_train_backward": [0, 0], "test": [0, 0]}

    # --- the horizon ---

    def meta_parameters(self) -> Params:
        params = dict(self.params)
        if self.log_horizon is not None:
            params[LOG_HORIZON] = self.log_horizon
        return params

    def horizon(self) -> Tensor:
        """T as a 0-dim tensor: exp(log T) (differentiable) when learned, else the hyper-parameter."""
        if self.log_horizon is not None:
            return self.log_horizon.exp()
        return torch.tensor(self.hparams.horizon, dtype=self.dtype, device=self.device)

    # --- the flow and its solution ---

    def flow(self, x: Tensor, y: Tensor, tasks: int | None) -> Callable[[Tensor, State], State]:
        """f(t, state) = -grad L(state) on (x, y); with `tasks`, state and data carry a leading task dimension
        and each task's gradient is vmapped. `torch.func.grad` keeps f differentiable for an outer autograd
        (back-propagation through the solver, or the adjoint's vector-Jacobian products, i.e. Hessian-vector
        products of the support loss)."""
        grad = torch.func.grad(self.loss)
        if tasks is not None:
            grad = torch.func.vmap(grad)

        def f(t: Tensor, state: State) -> State:
            self.counter(tasks or 1)
            grads = grad(dict(zip(self.names, state)), x, y)
            return tuple(-grads[name] for name in self.names)

        return f

    def solve(
        self,
        f: Callable[[Tensor, State], State],
        start: State,
        times: Tensor,
        steps: int,
        *,
        adjoint: bool = False,
    ) -> State:
        """The ODE solution at `times` (each state tensor gains a leading time dimension). A fixed-step solver
        takes `steps` equal steps from times[0] to times[-1] (the `times` must be points of that grid);
        dopri5 uses rtol / atol. With `adjoint`, gradients come from torchdiffeq's adjoint method."""
        hp = self.hparams
        if hp.solver in FIXED_STEP_SOLVERS:
            # torchdiffeq's own step_size grid rounds (T / h) up and may add a tiny extra step; this grid is
            # exact. The adjoint's backward solves ask for the grid of one interval between output times (the
            # whole [T, 0], or one checkpointed step): the step count follows the interval's length.
            span = abs(float((times[-1] - times[0]).detach()))

            def grid(func: Any, y0: Tensor, t: Tensor) -> Tensor:
                return uniform_grid(
                    t[0], t[-1], max(1, round(steps * abs(float((t[-1] - t[0]).detach())) / span))
                )

            kwargs: dict[str, Any] = {"method": hp.solver, "options": {"grid_constructor": grid}}
        else:
            kwargs = {"method": hp.solver, "rtol": hp.rtol, "atol": hp.atol}
        if adjoint:
            # The flow has no parameters of its own: theta(0) is the state, T the end time.
            return torchdiffeq.odeint_adjoint(f, start, times, adjoint_params=(), **kwargs)
        return torchdiffeq.odeint(f, start, times, **kwargs)

    def adapted(self, sx: Tensor, sy: Tensor, tasks: int | None) -> Params:
        """theta(T) after the flow on the support set from the meta-parameters, differentiable w.r.t. them
        (and T); with `tasks`, `sx` / `sy` hold that many tasks and so does the result."""
        hp = self.hparams
        start = tuple(self.params[name] for name in self.names)
        if tasks is not None:
            start = tuple(p.expand(tasks, *p.shape) for p in start)
        horizon = self.horizon()
        steps = self.train_steps()
        if hp.adjoint and hp.adjoint_checkpoints:
            # Output times are kept by the forward solve and the backward solve restarts from them.
            times = uniform_grid(
                torch.zeros_like(horizon),
                horizon,
                steps if hp.solver in FIXED_STEP_SOLVERS else hp.solver_steps,
            )
        else:
            times = torch.stack([torch.zeros_like(horizon), horizon])
        before = self.counter.evaluations
        solution = self.solve(self.flow(sx, sy, tasks), start, times, steps, adjoint=hp.adjoint)
        self._count("meta_train", self.counter.evaluations - before, tasks or 1)
        return {name: s[-1] for name, s in zip(self.names, solution)}

    def train_steps(self) -> int:
        """A fixed-step solver's steps over the meta-train horizon: `solver_steps`, or with a learned horizon
        as many as keep the step at most horizon / solver_steps (the initial one), so a growing T does not
        carry the step out of the solver's stability region."""
        hp = self.hparams
        if self.log_horizon is None:
            return hp.solver_steps
        return max(
            hp.solver_steps, math.ceil(hp.solver_steps * float(self.horizon().detach()) / hp.horizon - 1e-9)
        )

    def step_size(self) -> float:
        """The meta-train step of a fixed-step solver: horizon / train_steps()."""
        return float(self.horizon().detach()) / self.train_steps()

    def _count(self, kind: str, evaluations: int, tasks: int) -> None:
        self.nfe[kind][0] += evaluations
        self.nfe[kind][1] += tasks

    # --- meta-training ---

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """One task's query loss at theta(T) (the looped path)."""
        return self.loss(self.adapted(sx, sy, None), qx, qy)

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean query loss at theta(T) over the batch: one ODE over the stacked tasks with `vmap_tasks`,
        else one solve per task."""
        if not self.vmap_tasks:
            return super().meta_loss(batch)
        adapted = self.adapted(batch.support_x, batch.support_y, batch.num_tasks)
        return torch.func.vmap(self.loss)(adapted, batch.query_x, batch.query_y).mean()

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, its gradient by name), counting the adjoint's backward function evaluations apart."""
        loss = self.meta_loss(batch)
        before = self.counter.evaluations
        grads = gradients(loss, self.meta_parameters())
        if self.hparams.adjoint:
            self._count("meta_train_backward", self.counter.evaluations - before, batch.num_tasks)
        return float(loss.detach()), grads

    # --- adaptation at test time ---

    def test_horizon(self) -> float:
        """The flow's length at meta-test: `test_horizon`, else the (learned) meta-train horizon."""
        if self.hparams.test_horizon is not None:
            return float(self.hparams.test_horizon)
        return float(self.horizon().detach())

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """The flow on one task at times test_horizon * k / steps, k = 0..steps (steps + 1 detached states).

        A fixed-step solver keeps at most the meta-train step size (`step_size`), on a grid of a multiple
        of `steps` steps so every reported time is a grid point (no interpolation); dopri5 reports those
        times from its own steps.
        """
        hp = self.hparams
        start = snapshot(self.params)
        if steps == 0:
            return [start]
        horizon = self.test_horizon()
        end = torch.tensor(horizon, dtype=self.dtype, device=self.device)
        zero = torch.zeros_like(end)
        if hp.solver in FIXED_STEP_SOLVERS:
            ratio = horizon / (self.step_size() * steps)
            per_report = max(1, math.ceil(ratio - 1e-9))
            times = uniform_grid(zero, end, steps * per_report)[::per_report]
            grid_steps = steps * per_report
        else:
            times, grid_steps = uniform_grid(zero, end, steps), steps
        before = self.counter.evaluations
        with torch.no_grad():
            solution = self.solve(
                self.flow(support_x, support_y, None), tuple(start[n] for n in self.names), times, grid_steps
            )
        self._count("test", self.counter.evaluations - before, 1)
        return [{name: s[k].detach() for name, s in zip(self.names, solution)} for k in range(steps + 1)]

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load meta-parameters and restart the test NFE count: the runner loads the best meta-parameters just
        before the test episodes, so what is counted from here on is the test's (not validation's)."""
        super().load_state_dict(state)
        self.nfe["test"] = [0, 0]

    def describe(self) -> dict[str, Any]:
        """NFE per task (meta-train forward, adjoint backward) and per test episode; the learned horizon."""
        nfe = {kind: total / count for kind, (total, count) in self.nfe.items() if count}
        info: dict[str, Any] = {"solver": self.hparams.solver, "adjoint": self.hparams.adjoint, "nfe": nfe}
        if self.log_horizon is not None:
            info["chosen"] = {"horizon": float(self.horizon().detach())}
        return info
