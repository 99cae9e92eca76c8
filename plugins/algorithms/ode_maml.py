"""MAML with continuous-time adaptation: the inner loop as the gradient flow of the support loss,
integrated by an ODE solver. Finn, Abbeel & Levine (2017), "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML, with the inner SGD steps replaced by their continuous limit, as in
Deleu, Kanaa, Feng, Kerg, Bengio, Lajoie & Bacon (2022), "Continuous-Time Meta-Learning with Forward Mode
Differentiation" (COMLN), ICLR; solvers and the adjoint method from Chen, Rubanova, Bettencourt & Duvenaud
(2018), "Neural Ordinary Differential Equations", NeurIPS (torchdiffeq).

Adaptation to a task solves d theta/dt = -grad L_support(theta) from the meta-learned initialisation
theta(0) over a horizon T; the meta-objective is the mean query loss at theta(T). Euler's method with N
steps over T = N * alpha is exactly MAML's N steps of size alpha; RK4 (torchdiffeq's, Kutta's 3/8 rule) and
the adaptive Dormand-Prince 5(4) solver follow the flow itself. The meta-gradient either back-propagates
through the solver's operations (memory grows with the number of steps, as MAML's) or comes from the adjoint
method (`torchdiffeq.odeint_adjoint`: the adjoint ODE is integrated backwards from T, with Hessian-vector
products of the support loss, and memory stays constant in the number of solver steps; Chen et al. 2018,
section 2). With `learn_horizon` the horizon itself is meta-learned, parameterised by its logarithm so it
stays positive (as COMLN learns its horizon).

At meta-test the flow runs over `test_horizon` (default: the meta-train horizon) and the states reported
after "step" k = 0..test_steps are the ODE solution at test_horizon * k / test_steps: the harness's per-step
curve (MSE@1, MSE@5, ...) is the flow at intermediate times. The record's `algorithm_info` carries the
solver's function-evaluation counts (NFE) per task at meta-train and per episode at test.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl

#: torchdiffeq's method names: fixed-step Euler and RK4, adaptive Dormand-Prince 5(4).
SOLVERS = ("euler", "rk4", "dopri5")
FIXED_STEP_SOLVERS = ("euler", "rk4")


@dataclass(frozen=True)
class ODEMAMLHparams:
    """The flow, its solver, the meta-gradient and the meta-optimiser.

    horizon: the flow's length T at meta-train (the start of the learned horizon with `learn_horizon`).
        A gradient-descent step of size alpha is flow time alpha, so T = 0.05 is MAML's 5 steps of 0.01.
        Measured on sinusoid K = 10 with rk4 and 5 steps (1000 meta-iterations): T = 0.05 reached MSE 0.51
        after the test flow (MAML 0.66 after its 10 test steps); T = 0.1 diverged (a step T / 5 = 0.02
        leaves RK4's stability region once meta-training has sharpened the support loss's curvature).
    solver: "euler", "rk4" or "dopri5" (torchdiffeq's odeint methods).
    solver_steps: steps of a fixed-step solver over the horizon (step size T / solver_steps); dopri5
        chooses its own steps and ignores it.
    rtol, atol: dopri5's relative and absolute error tolerances (ignored by the fixed-step solvers).
    adjoint: meta-gradient by the adjoint method (torchdiffeq.odeint_adjoint; memory constant in the number
        of solver steps) instead of back-propagating through the solver.
    adjoint_checkpoints: with the adjoint, keep the forward solution at every step of a fixed-step solver (at
        `solver_steps` equally spaced times with dopri5), where torchdiffeq's backward solve restarts, instead
        of reconstructing theta(t) by integrating the flow backwards from theta(T). That reconstruction is
        gradient ascent, which amplifies errors like exp(lambda_max t) on a stiff support loss: on sinusoid
        K = 10 (rk4, 5 steps, T = 0.05) the pure adjoint diverged at meta-iteration 349. The checkpoints are
        parameter-sized states, one per step; activation memory stays constant in the number of steps.
    learn_horizon: meta-learn T (as log T, with the other meta-parameters' Adam; COMLN). A fixed-step
        solver then takes as many steps as keep each at most horizon / solver_steps.
    test_steps: reported states at meta-test, the flow at test_horizon * k / test_steps for k = 0..test_steps.
    test_horizon: the flow's length at meta-test; None means the meta-train horizon (the learned one with
        `learn_horizon`). Fixed-step solvers take at most the meta-train step size at test, on a grid that
        holds every reported time.
    meta_lr: Adam's step size for the meta-update (MAML's 0.001).
    meta_batch_size: tasks per meta-update (MAML's 25 for sinusoids).
    vmap_tasks: integrate the meta-batch's tasks as one ODE over their stacked parameters, each task's
        gradient vectorised by vmap. The tasks do not interact, so the fixed-step solvers give each task's own
        solution (to float rounding; much faster than a loop of solves); dopri5 then chooses one step
        size for the whole batch (by its error norm over all tasks), and the NFE counts are the batch's.
    """

    horizon: float = 0.05
    solver: str = "rk4"
    solver_steps: int = 5
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: bool = False
    adjoint_checkpoints: bool = False
    learn_horizon: bool = False
    test_steps: int = 10
    test_horizon: float | None = None
    meta_lr: float = 0.001
    meta_batch_size: int = 25
    vmap_tasks: bool = True

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        check_ranges(
            self,
            at_least_one=("solver_steps", "meta_batch_size"),
            non_negative=("test_steps",),
            positive=("horizon", "rtol", "atol", "meta_lr"),
        )
        if self.test_horizon is not None and self.test_horizon <= 0:
            raise ValueError(
                f"test_horizon must be > 0, or None for the meta-train horizon, got {self.test_horizon!r}"
            )


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="ode-maml",
            factory="metaharness_plugins.algorithms._ode_maml:ODEMAML",
            hparams=ODEMAMLHparams,
            task_kinds=frozenset({"regression"}),
            description="MAML with the inner loop as gradient flow, integrated by torchdiffeq (euler, rk4, "
            "dopri5; "
            "backprop or adjoint)",
            paper="Deleu et al. 2022, Continuous-Time Meta-Learning with Forward Mode Differentiation "
            "(ICLR); "
            "Chen et al. 2018, Neural Ordinary Differential Equations (NeurIPS); Finn, Abbeel & Levine 2017, "
            "Model-Agnostic Meta-Learning (ICML)",
            second_order=True,
            requires=("torchdiffeq",),
        )
    ]


# The implementation lives in _ode_maml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._ode_maml")
