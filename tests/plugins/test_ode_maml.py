"""ODE-MAML: Euler against MAML (adapted parameters and meta-gradient), RK4 and dopri5 against the
closed-form gradient flow of a quadratic loss (scipy.linalg.expm), the adjoint against back-propagation
through the solver, the learned horizon's gradient against finite differences, function-evaluation counts,
the graph it keeps, and learning on sinusoid regression."""

from __future__ import annotations

from collections.abc import Callable

import pluggy
import pytest
import scipy.linalg
import torch
from torch import nn

import harness.hookspecs
from harness import Algorithm, TaskBatch
from metaharness_plugins.algorithms import ode_maml as ode_maml_module
from metaharness_plugins.algorithms._ode_maml import LOG_HORIZON
from metaharness_plugins.algorithms.maml import MAML, MAMLHparams
from metaharness_plugins.algorithms.ode_maml import ODEMAML, ODEMAMLHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

MetaTrain = Callable[..., list[float]]
F64 = torch.float64
D = 4  # inputs of the linear-regression tasks: 5 parameters with the bias


def _tiny_model() -> nn.Module:
    # tanh, so that every second-derivative term of the meta-gradient is non-zero (as in test_maml.py).
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def _tiny_batch() -> TaskBatch:
    batch = SinusoidSuite(SinusoidConfig(shots=5, query=6)).sample(
        4, torch.Generator().manual_seed(21), "train"
    )
    return TaskBatch(*(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))


def _ode(model: nn.Module | None = None, **hparams) -> ODEMAML:
    return ODEMAML(
        ODEMAMLHparams(**hparams), model or _tiny_model(), SinusoidSuite(SinusoidConfig()), CPUBackend()
    )


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in state.values()])


@pytest.mark.parametrize("vmap_tasks", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_euler_with_n_steps_over_n_alpha_is_maml(steps: int, vmap_tasks: bool) -> None:
    """Euler's step theta + h * f(theta) with h = T / N = alpha is MAML's SGD step: the same meta-loss,
    meta-gradient (second order, through the solver) and adapted parameters, in float64."""
    batch, alpha = _tiny_batch(), 0.1
    maml = MAML(
        MAMLHparams(inner_lr=alpha, inner_steps=steps, vmap_tasks=vmap_tasks),
        _tiny_model(),
        SinusoidSuite(SinusoidConfig()),
        CPUBackend(),
    )
    ode = _ode(
        solver="euler", solver_steps=steps, horizon=steps * alpha, test_steps=steps, vmap_tasks=vmap_tasks
    )
    (loss_m, grads_m), (loss_o, grads_o) = maml.meta_gradient(batch), ode.meta_gradient(batch)
    assert loss_o == pytest.approx(loss_m, abs=1e-14) and list(grads_o) == list(grads_m)
    for name in grads_m:
        torch.testing.assert_close(grads_o[name], grads_m[name], rtol=0, atol=1e-13)
    for i in range(batch.num_tasks):
        ours, theirs = (
            ode.adapt(batch.support_x[i], batch.support_y[i], steps),
            maml.adapt(batch.support_x[i], batch.support_y[i], steps),
        )
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(_flat(a), _flat(b), rtol=0, atol=1e-14)


def test_euler_test_time_flow_over_ten_alpha_is_mamls_ten_test_steps() -> None:
    """MAML's sinusoid protocol: one step of alpha at meta-train, ten at test = a test horizon of 10 alpha."""
    batch, alpha = _tiny_batch(), 0.01
    maml = MAML(MAMLHparams(inner_lr=alpha), _tiny_model(), SinusoidSuite(SinusoidConfig()), CPUBackend())
    ode = _ode(solver="euler", solver_steps=1, horizon=alpha, test_horizon=10 * alpha, test_steps=10)
    for a, b in zip(
        ode.adapt(batch.support_x[0], batch.support_y[0], 10),
        maml.adapt(batch.support_x[0], batch.support_y[0], 10),
        strict=True,
    ):
        torch.testing.assert_close(_flat(a), _flat(b), rtol=0, atol=1e-14)


def _quadratic() -> tuple[ODEMAML, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear-regression task: L(theta) = 1/n ||X theta - y||^2 has gradient H (theta - theta*),
    H = 2/n X^T X, so the flow is theta(t) = theta* + expm(-H t) (theta(0) - theta*)."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(12, D, generator=g, dtype=F64), torch.randn(12, 1, generator=g, dtype=F64)
    design = torch.cat([x, torch.ones(12, 1, dtype=F64)], dim=1)
    hessian = 2 / 12 * design.T @ design
    optimum = torch.linalg.solve(hessian, 2 / 12 * design.T @ y[:, 0])
    torch.manual_seed(3)
    return nn.Linear(D, 1).double(), x, y, hessian, optimum


def _closed_form_flow(
    theta0: torch.Tensor, hessian: torch.Tensor, optimum: torch.Tensor, t: float
) -> torch.Tensor:
    propagator = torch.from_numpy(scipy.linalg.expm(-(hessian * t).numpy()))
    return optimum + propagator @ (theta0 - optimum)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("rk4", 4)])
def test_fixed_step_solvers_converge_to_the_closed_form_flow_at_their_order(solver: str, order: int) -> None:
    model, x, y, hessian, optimum = _quadratic()
    theta0, horizon = _flat(dict(model.named_parameters())).detach(), 1.0
    exact = _closed_form_flow(theta0, hessian, optimum, horizon)
    errors = []
    for steps in (8, 16, 32):
        final = _ode(model, solver=solver, solver_steps=steps, horizon=horizon).adapt(x, y, 1)[-1]
        errors.append(float((_flat(final) - exact).norm()))
    for coarse, fine in zip(errors, errors[1:]):
        # Halving the step divides a p-th order method's global error by about 2^p.
        assert 0.75 * 2**order < coarse / fine < 1.25 * 2**order
    assert errors[-1] < (1e-2 if order == 1 else 1e-6)


def test_dopri5_follows_the_closed_form_flow_at_every_reported_time() -> None:
    model, x, y, hessian, optimum = _quadratic()
    theta0 = _flat(dict(model.named_parameters())).detach()
    algo = _ode(model, solver="dopri5", rtol=1e-10, atol=1e-10, horizon=0.5, test_horizon=2.0)
    states = algo.adapt(x, y, 4)
    for k, state in enumerate(states):
        torch.testing.assert_close(
            _flat(state), _closed_form_flow(theta0, hessian, optimum, 0.5 * k), rtol=0, atol=1e-8
        )


@pytest.mark.parametrize(("vmap_tasks", "checkpoints"), [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize(("solver", "steps", "tol"), [("dopri5", 1, 2e-5), ("rk4", 20, 3e-5)])
def test_adjoint_meta_gradient_equals_backprop_through_the_solver(
    solver: str, steps: int, tol: float, vmap_tasks: bool, checkpoints: bool
) -> None:
    """The continuous adjoint and the discrete backprop agree up to the solver's error (the horizon's
    gradient too), which these tolerances and step counts make small (measured: 5e-6 and 8e-6 of the largest
    entry; 9e-5 with 10 RK4 steps)."""
    batch = _tiny_batch().slice(0, 2)
    results = [
        _ode(
            solver=solver,
            solver_steps=steps,
            horizon=0.3,
            rtol=1e-7,
            atol=1e-7,
            learn_horizon=True,
            adjoint=adjoint,
            adjoint_checkpoints=checkpoints,
            vmap_tasks=vmap_tasks,
        ).meta_gradient(batch)
        for adjoint in (False, True)
    ]
    (loss_b, grads_b), (loss_a, grads_a) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-10) and LOG_HORIZON in grads_a
    scale = max(float(g.abs().max()) for g in grads_b.values())
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=tol * scale)


def test_learned_horizon_gradient_matches_finite_differences() -> None:
    """At T = 0.25 (below the initial 0.3, so 4 steps either side) d meta-loss / d log T by backprop equals a
    central difference."""
    batch, eps, log_t = _tiny_batch(), 1e-6, torch.log(torch.tensor(0.25, dtype=F64))
    algo = _ode(solver="rk4", solver_steps=4, horizon=0.3, learn_horizon=True)
    with torch.no_grad():
        algo.log_horizon.fill_(log_t)
    _, grads = algo.meta_gradient(batch)
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            algo.log_horizon.fill_(log_t + sign * eps)
        assert algo.train_steps() == 4
        losses.append(float(algo.meta_loss(batch).detach()))
    assert float(grads[LOG_HORIZON]) == pytest.approx((losses[0] - losses[1]) / (2 * eps), abs=1e-8)
    assert algo.describe()["chosen"]["horizon"] == pytest.approx(0.25 * torch.exp(torch.tensor(-eps)).item())


def test_a_growing_learned_horizon_keeps_the_initial_step_size() -> None:
    algo = _ode(solver="euler", solver_steps=4, horizon=0.2, learn_horizon=True, test_steps=2)
    with torch.no_grad():
        algo.log_horizon.fill_(torch.log(torch.tensor(0.5, dtype=F64)))
    assert algo.train_steps() == 10 and algo.step_size() == pytest.approx(0.05)
    batch = _tiny_batch()
    algo.meta_gradient(batch)
    algo.load_state_dict(algo.state_dict())
    algo.adapt(batch.support_x[0], batch.support_y[0], 2)  # 2 reported times, 0.25 apart: 10 steps of 0.05
    assert algo.describe()["nfe"] == {"meta_train": 10, "test": 10}


def test_meta_training_moves_a_learned_horizon() -> None:
    batch = _tiny_batch()
    algo = _ode(solver="euler", solver_steps=2, horizon=0.05, learn_horizon=True, meta_lr=0.05)
    for _ in range(3):
        algo.meta_train_step(batch)
    assert algo.describe()["chosen"]["horizon"] != pytest.approx(0.05, rel=1e-3)
    assert (
        LOG_HORIZON in algo.state_dict()
        and algo.num_parameters() == sum(p.numel() for p in algo.params.values()) + 1
    )


@pytest.mark.parametrize(("solver", "per_step"), [("euler", 1), ("rk4", 4)])
def test_function_evaluations_are_counted_per_task(solver: str, per_step: int) -> None:
    batch = _tiny_batch()
    for vmap_tasks in (True, False):
        algo = _ode(solver=solver, solver_steps=3, adjoint=True, learn_horizon=True, vmap_tasks=vmap_tasks)
        algo.meta_gradient(batch)
        algo.adapt(batch.support_x[0], batch.support_y[0], 10)  # a validation episode ...
        algo.load_state_dict(algo.state_dict())  # ... then the runner loads the best state before testing
        algo.adapt(batch.support_x[0], batch.support_y[0], 6)
        nfe = algo.describe()["nfe"]
        # Backward: the adjoint's steps, plus one evaluation for the end time's gradient (learned T).
        # Test: 6 reported times at most T / 3 apart -> 6 steps.
        assert nfe == {
            "meta_train": 3 * per_step,
            "meta_train_backward": 3 * per_step + 1,
            "test": 6 * per_step,
        }


def _graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_adjoint_keeps_a_graph_independent_of_the_number_of_solver_steps() -> None:
    """Back-propagation through the solver keeps every step's graph (memory grows with the steps, as MAML's);
    the adjoint keeps one node for the whole solve, checkpointed or not (its backward re-integrates)."""
    batch = _tiny_batch()

    def size(steps: int, **options) -> int:
        return _graph_size(_ode(solver="rk4", solver_steps=steps, **options).meta_loss(batch))

    backprop, adjoint = [size(s) for s in (2, 8)], [size(s, adjoint=True) for s in (2, 8)]
    checkpointed = [size(s, adjoint=True, adjoint_checkpoints=True) for s in (2, 8)]
    assert backprop[1] > 3 * backprop[0]
    assert adjoint[0] == adjoint[1] < backprop[0] and checkpointed[0] == checkpointed[1] < backprop[0]


def test_adapt_contract(suite: SinusoidSuite, backend: CPUBackend, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(ODEMAML(ODEMAMLHparams(), suite.build_model(), suite, backend), 3)
    assert (
        len(
            ODEMAML(ODEMAMLHparams(), suite.build_model(), suite, backend).adapt(
                torch.zeros(3, 1), torch.zeros(3, 1), 0
            )
        )
        == 1
    )


def test_registers_ode_maml_and_rejects_bad_settings() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(ode_maml_module)
    [specs] = manager.hook.harness_register_algorithms()
    assert [s.name for s in specs] == ["ode-maml"] and specs[0].hparams is ODEMAMLHparams
    assert (
        specs[0].task_kinds == {"regression"}
        and "Deleu" in specs[0].paper
        and specs[0].requires == ("torchdiffeq",)
    )
    for bad, match in (
        ({"solver": "rk45"}, "euler, rk4, dopri5"),
        ({"solver_steps": 0}, "solver_steps must be >= 1"),
        ({"horizon": 0.0}, "horizon must be > 0"),
        ({"rtol": -1.0}, "rtol must be > 0"),
        ({"test_horizon": 0.0}, "test_horizon must be > 0"),
        ({"test_steps": -1}, "test_steps must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            ODEMAMLHparams(**bad)


def _mean_mse(algo: Algorithm, tasks: TaskBatch, steps: int) -> torch.Tensor:
    """Mean query MSE over `tasks` after 0..steps adaptation steps (as the harness scores them)."""
    total = torch.zeros(steps + 1, dtype=F64)
    with torch.no_grad():
        for i in range(tasks.num_tasks):
            for k, state in enumerate(algo.adapt(tasks.support_x[i], tasks.support_y[i], steps)):
                total[k] += float(((algo.predict(state, tasks.query_x[i]) - tasks.query_y[i]) ** 2).mean())
    return total / tasks.num_tasks


def test_ode_maml_improves_clearly_over_its_initialisation(
    suite: SinusoidSuite, backend: CPUBackend, test_tasks: TaskBatch, meta_train: MetaTrain
) -> None:
    torch.manual_seed(0)
    algo = ODEMAML(
        ODEMAMLHparams(solver="euler", solver_steps=2, meta_batch_size=10, meta_lr=0.003),
        suite.build_model(),
        suite,
        backend,
    )
    tasks = test_tasks.slice(0, 30)
    before = _mean_mse(algo, tasks, 10)
    meta_train(algo, 100)
    after = _mean_mse(algo, tasks, 10)
    # Measured (seed 0): MSE at the end of the test flow 3.71 -> 2.38 on these 30 tasks, 100 meta-iterations.
    assert after[10] < 0.8 * before[10] and after[10] < after[0]
