"""iMAML: the proximal inner loop against its closed form, the conjugate-gradient meta-gradient against
the exact implicit gradient (torch.linalg.solve) and finite differences, the Gauss-Newton products against
the explicit matrix, Adam against torch.optim, the graph it keeps, and learning on sinusoid regression."""

from __future__ import annotations

from collections.abc import Callable

import pluggy
import pytest
import torch
from torch import nn

import harness.hookspecs
from harness import Algorithm, TaskBatch
from metaharness_plugins.algorithms import imaml as imaml_module
from metaharness_plugins.algorithms._imaml import (
    conjugate_gradient,
    gauss_newton_vector_product,
    proximal_descent,
)
from metaharness_plugins.algorithms.imaml import IMAML, IMAMLHparams
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite
from tests.plugins.test_maml import _Images

MetaTrain = Callable[..., list[float]]
D = 4  # input dimension of the quadratic tasks: 5 parameters with the bias
F64 = torch.float64
#: Inner gradient descent on these tasks: the support Hessians' eigenvalues lie in [0.30, 3.83], so with
#: lam >= 0.5 the regularised objective's lie in [0.8, 4.4] and a step of 0.3 contracts the error by at least
#: 0.76 per step: 150 steps reach float64 precision.
LR, STEPS = 0.3, 150


def _linear() -> nn.Module:
    torch.manual_seed(3)
    return nn.Linear(D, 1).double()


def _quadratic_tasks(n_tasks: int = 3) -> TaskBatch:
    """Linear-regression tasks: with a linear model, MSE support and query losses are quadratics in the
    parameters, with Hessian 2/n X^T X (X the inputs with a column of ones for the bias)."""
    g = torch.Generator().manual_seed(5)
    return TaskBatch(
        torch.randn(n_tasks, 12, D, generator=g, dtype=F64),
        torch.randn(n_tasks, 12, 1, generator=g, dtype=F64),
        torch.randn(n_tasks, 9, D, generator=g, dtype=F64),
        torch.randn(n_tasks, 9, 1, generator=g, dtype=F64),
    )


def _design(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=F64)], dim=1)


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params["weight"].flatten(), params["bias"]])


def _closed_form(theta: torch.Tensor, batch: TaskBatch, i: int, lam: float) -> tuple[torch.Tensor, ...]:
    """(phi*, H, grad L_query(phi*)) of task i: phi* = argmin 1/n ||X phi - y||^2 + lam/2 ||phi - theta||^2,
    i.e. (H + lam I) phi* = 2/n X^T y + lam theta."""
    xs, ys = _design(batch.support_x[i]), batch.support_y[i, :, 0]
    xq, yq = _design(batch.query_x[i]), batch.query_y[i, :, 0]
    hessian = 2 / xs.shape[0] * xs.T @ xs
    phi = torch.linalg.solve(
        hessian + lam * torch.eye(D + 1, dtype=F64), 2 / xs.shape[0] * xs.T @ ys + lam * theta
    )
    return phi, hessian, 2 / xq.shape[0] * xq.T @ (xq @ phi - yq)


def _algo(**hparams) -> IMAML:
    return IMAML(IMAMLHparams(**hparams), _linear(), SinusoidSuite(SinusoidConfig()), CPUBackend())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_inner_loop_reaches_the_closed_form_proximal_solution(optimizer: str) -> None:
    batch, lam = _quadratic_tasks(2), 2.0
    algo = _algo(inner_lr=LR if optimizer == "sgd" else 0.05, lam=lam, inner_optimizer=optimizer)
    theta = _flat(algo.state_dict())
    for i in range(batch.num_tasks):
        phi, _, _ = _closed_form(theta, batch, i, lam)
        states = algo.adapt(batch.support_x[i], batch.support_y[i], STEPS if optimizer == "sgd" else 400)
        assert torch.equal(_flat(states[0]), theta)
        # Gradient descent converges linearly to machine precision; Adam's constant step leaves it near.
        torch.testing.assert_close(_flat(states[-1]), phi, rtol=0, atol=1e-12 if optimizer == "sgd" else 1e-5)


def test_inner_adam_steps_are_torch_optim_adams() -> None:
    batch, lam, lr = _quadratic_tasks(1), 0.7, 0.05
    algo = _algo(inner_lr=lr, lam=lam, inner_optimizer="adam")
    states = algo.adapt(batch.support_x[0], batch.support_y[0], 6)
    theta = {k: v.detach().clone() for k, v in algo.params.items()}
    model = _linear()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for state in states[1:]:
        optimizer.zero_grad()
        prox = sum(((p - theta[k]) ** 2).sum() for k, p in model.named_parameters())
        (((model(batch.support_x[0]) - batch.support_y[0]) ** 2).mean() + lam / 2 * prox).backward()
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(state[name], p.detach(), rtol=0, atol=1e-14)


@pytest.mark.parametrize("vmap_tasks", [True, False])
@pytest.mark.parametrize(
    ("damping", "curvature"), [(0.0, "hessian"), (0.3, "hessian"), (0.0, "gauss-newton")]
)
def test_cg_meta_gradient_equals_the_exact_implicit_gradient(
    vmap_tasks: bool, damping: float, curvature: str
) -> None:
    """With as many CG steps as parameters, CG solves the 5 x 5 system exactly (up to rounding), so the
    meta-gradient is mean_i ((1 + damping) I + H_i / lam)^-1 grad L_query,i(phi*_i) to 1e-10. A linear model's
    outputs are linear in its parameters, so there the Gauss-Newton matrix is the Hessian."""
    batch, lam = _quadratic_tasks(), 2.0
    algo = _algo(
        inner_lr=LR,
        inner_steps=STEPS,
        lam=lam,
        cg_steps=D + 1,
        damping=damping,
        curvature=curvature,
        vmap_tasks=vmap_tasks,
    )
    theta = _flat(algo.state_dict())
    loss, grads = algo.meta_gradient(batch)
    exact, losses = [], []
    for i in range(batch.num_tasks):
        phi, hessian, query_grad = _closed_form(theta, batch, i, lam)
        matrix = (1 + damping) * torch.eye(D + 1, dtype=F64) + hessian / lam
        exact.append(torch.linalg.solve(matrix, query_grad))
        xq = _design(batch.query_x[i])
        losses.append(((xq @ phi - batch.query_y[i, :, 0]) ** 2).mean())
    torch.testing.assert_close(_flat(grads), torch.stack(exact).mean(0), rtol=0, atol=1e-10)
    assert loss == pytest.approx(float(torch.stack(losses).mean()), abs=1e-12)
    assert algo.describe()["inner_gradient_norm"]["last"] < 1e-12  # the inner problem was solved


def test_implicit_gradient_is_the_derivative_of_the_query_loss_at_the_proximal_solution() -> None:
    """Lemma 1 of the paper, checked independently of the implicit equation: d L_query(phi*(theta)) / d theta
    by central finite differences of the closed-form phi*(theta) equals the CG meta-gradient."""
    batch, lam = _quadratic_tasks(1), 0.5
    algo = _algo(inner_lr=LR, inner_steps=STEPS, lam=lam, cg_steps=D + 1)
    theta = _flat(algo.state_dict())
    _, grads = algo.meta_gradient(batch)

    def query_loss(t: torch.Tensor) -> float:
        phi, _, _ = _closed_form(t, batch, 0, lam)
        return float(((_design(batch.query_x[0]) @ phi - batch.query_y[0, :, 0]) ** 2).mean())

    eps = 1e-6
    numeric = torch.tensor(
        [
            (query_loss(theta + eps * e) - query_loss(theta - eps * e)) / (2 * eps)
            for e in torch.eye(D + 1, dtype=F64)
        ],
        dtype=F64,
    )
    torch.testing.assert_close(_flat(grads), numeric, rtol=0, atol=1e-8)


def test_fewer_cg_steps_approximate_and_first_order_drops_the_inverse() -> None:
    batch, lam = _quadratic_tasks(1), 1.0
    theta = _flat(_algo().state_dict())
    phi, hessian, query_grad = _closed_form(theta, batch, 0, lam)
    matrix = torch.eye(D + 1, dtype=F64) + hessian / lam
    exact = torch.linalg.solve(matrix, query_grad)
    errors = []
    for steps in range(1, D + 2):
        _, grads = _algo(inner_lr=LR, inner_steps=STEPS, lam=lam, cg_steps=steps).meta_gradient(batch)
        error = _flat(grads) - exact
        errors.append(float(error @ matrix @ error))  # CG minimises this A-norm over growing Krylov spaces
    assert all(b <= a + 1e-15 for a, b in zip(errors, errors[1:])) and errors[0] > 1e-6 > 1e-20 > errors[-1]
    _, first = _algo(inner_lr=LR, inner_steps=STEPS, lam=lam, first_order=True).meta_gradient(batch)
    torch.testing.assert_close(_flat(first), query_grad, rtol=0, atol=1e-12)


def test_conjugate_gradient_solves_spd_systems_and_stops_on_negative_curvature() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=F64)
    spd, b = a @ a.T + 0.5 * torch.eye(6, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    x = conjugate_gradient(lambda v: {"p": spd @ v["p"]}, {"p": b}, 6)["p"]
    torch.testing.assert_close(x, torch.linalg.solve(spd, b), rtol=0, atol=1e-10)
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    x = conjugate_gradient(
        lambda v: {"p": indefinite @ v["p"]}, {"p": torch.tensor([0.0, 1.0], dtype=F64)}, 5
    )["p"]
    assert torch.equal(x, torch.zeros(2, dtype=F64))  # the first direction has negative curvature: no step


@pytest.mark.parametrize("autograd", [False, True])
def test_gauss_newton_products_are_the_explicit_matrixs(autograd: bool) -> None:
    """G v = J^T (2/n I) J v for MSE, J the output Jacobian computed by torch.func.jacrev."""
    model = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 1, generator=g, dtype=F64), torch.randn(7, 1, generator=g, dtype=F64)

    def forward(p: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (inputs,))

    def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2).mean()

    jacobian = torch.func.jacrev(lambda p: forward(p, x))(params)
    jacobian = torch.cat([jacobian[name].reshape(7, -1) for name in params], dim=1)
    v = {name: torch.randn(p.shape, generator=g, dtype=F64) for name, p in params.items()}
    grad, gnvp = gauss_newton_vector_product(forward, mse, params, x, y, autograd=autograd)
    expected = jacobian.T @ (2 / 7 * jacobian) @ torch.cat([t.flatten() for t in v.values()])
    torch.testing.assert_close(
        torch.cat([t.flatten() for t in gnvp(v).values()]), expected, rtol=0, atol=1e-14
    )
    reference = torch.func.grad(lambda p: mse(forward(p, x), y))(params)
    for name in params:
        torch.testing.assert_close(grad[name], reference[name], rtol=0, atol=1e-14)


def test_gauss_newton_keeps_each_task_meta_gradient_within_its_query_gradient() -> None:
    """I + G/lam >= I, so the CG iterates' norms, which grow towards the solution's (Steihaug 1983), stay
    below ||grad L_query||; with the Hessian, a support loss with curvature below -lam gives no such bound."""
    suite = SinusoidSuite(SinusoidConfig())
    batch = suite.sample(25, torch.Generator().manual_seed(2), "train")
    torch.manual_seed(0)
    algo = IMAML(
        IMAMLHparams(curvature="gauss-newton", inner_lr=0.02), suite.build_model(), suite, CPUBackend()
    )
    first = IMAML(IMAMLHparams(first_order=True, inner_lr=0.02), suite.build_model(), suite, CPUBackend())
    first.load_state_dict(algo.state_dict())
    for i in range(batch.num_tasks):
        task = (batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
        _, grads, _ = algo.task_meta_gradient(*task)
        _, query_grads, _ = first.task_meta_gradient(*task)
        norm = lambda d: float(torch.cat([t.flatten() for t in d.values()]).norm())  # noqa: E731
        assert norm(grads) <= norm(query_grads) * (1 + 1e-5)


def test_meta_gradient_keeps_no_graph_to_the_meta_parameters() -> None:
    """Nothing of the inner loop is differentiated: the meta-gradient is plain tensors and the
    meta-parameters gain no `.grad`, whatever the number of inner steps (the memory claim's reason)."""
    suite = SinusoidSuite(SinusoidConfig())
    batch = suite.sample(4, torch.Generator().manual_seed(0), "train")
    torch.manual_seed(0)
    algo = IMAML(IMAMLHparams(inner_steps=20), suite.build_model(), suite, CPUBackend())
    _, grads = algo.meta_gradient(batch)
    assert all(g.grad_fn is None and not g.requires_grad for g in grads.values())
    assert all(p.grad is None for p in algo.params.values())


def test_vmap_and_loop_over_tasks_agree(suite: SinusoidSuite, backend: CPUBackend) -> None:
    batch = suite.sample(6, torch.Generator().manual_seed(1), "train")
    results = []
    for vmap_tasks in (True, False):
        torch.manual_seed(0)
        results.append(
            IMAML(IMAMLHparams(vmap_tasks=vmap_tasks), suite.build_model(), suite, backend).meta_gradient(
                batch
            )
        )
    (loss_v, grads_v), (loss_l, grads_l) = results
    assert loss_v == pytest.approx(loss_l, rel=1e-5)
    for name in grads_v:
        torch.testing.assert_close(grads_v[name], grads_l[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("curvature", ["hessian", "gauss-newton"])
def test_conv_nets_take_the_fast_path_with_the_same_meta_gradient(curvature: str) -> None:
    """A looped conv net with batch norm on the CPU: harness.sequential's forward with autograd gradients and
    double-backward Hessian-vector products gives the float64 meta-gradient of the functional_call path."""
    suite = _Images(None)
    batch = suite.sample(3, torch.Generator().manual_seed(4), "train")
    results = []
    for fast in (True, False):
        torch.manual_seed(0)
        algo = IMAML(
            IMAMLHparams(inner_lr=0.1, inner_steps=3, lam=2.0, cg_steps=3, curvature=curvature),
            suite.build_model(),
            suite,
            CPUBackend(),
        )
        assert algo.fast_forward is not None and not algo.vmap_tasks  # batch norm: tasks are looped
        if not fast:
            algo.fast_forward = None
        results.append(algo.meta_gradient(batch))
    (loss_f, grads_f), (loss_p, grads_p) = results
    assert loss_f == pytest.approx(loss_p, abs=1e-12)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=0, atol=1e-10)


def test_adapt_contract(suite: SinusoidSuite, backend: CPUBackend, check_adapt: Callable) -> None:
    torch.manual_seed(0)
    check_adapt(IMAML(IMAMLHparams(), suite.build_model(), suite, backend), 3)


def test_inner_loop_is_a_generator_of_detached_iterates() -> None:
    batch = _quadratic_tasks(1)
    model = _linear()
    params = dict(model.named_parameters())
    loss = lambda p, x, y: ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()  # noqa: E731
    iterates = list(proximal_descent(loss, params, batch.support_x[0], batch.support_y[0], 4, 0.1, 1.0))
    assert len(iterates) == 5 and all(not t.requires_grad for state in iterates for t in state.values())


def test_registers_imaml_and_rejects_bad_settings() -> None:
    manager = pluggy.PluginManager("harness")
    manager.add_hookspecs(harness.hookspecs)
    manager.register(imaml_module)
    [specs] = manager.hook.harness_register_algorithms()
    assert [s.name for s in specs] == ["imaml"]
    assert specs[0].second_order and specs[0].hparams is IMAMLHparams
    assert specs[0].task_kinds == {"regression", "classification"} and "Rajeswaran" in specs[0].paper
    defaults = IMAMLHparams()
    assert (defaults.lam, defaults.cg_steps, defaults.damping, defaults.inner_optimizer) == (
        1.0,
        5,
        0.0,
        "sgd",
    )
    for bad, match in (
        ({"lam": 0.0}, "lam must be > 0"),
        ({"cg_steps": 0}, "cg_steps must be >= 1"),
        ({"damping": -0.1}, "damping must be >= 0"),
        ({"curvature": "fisher"}, "hessian, gauss-newton"),
        ({"inner_optimizer": "lbfgs"}, "sgd, adam"),
        ({"inner_lr": 0.5, "lam": 4.0}, "inner_lr \\* lam must be below 2"),
        ({"inner_steps": 0}, "inner_steps must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            IMAMLHparams(**bad)
    IMAMLHparams(inner_lr=0.5, lam=4.0, inner_optimizer="adam")  # Adam's steps are bounded by lr


def _mean_mse(algo: Algorithm, tasks: TaskBatch, steps: int) -> torch.Tensor:
    """Mean query MSE over `tasks` after 0..steps adaptation steps (as the harness scores them)."""
    total = torch.zeros(steps + 1, dtype=F64)
    with torch.no_grad():
        for i in range(tasks.num_tasks):
            for k, state in enumerate(algo.adapt(tasks.support_x[i], tasks.support_y[i], steps)):
                total[k] += float(((algo.predict(state, tasks.query_x[i]) - tasks.query_y[i]) ** 2).mean())
    return total / tasks.num_tasks


def test_imaml_improves_clearly_over_its_initialisation(
    suite: SinusoidSuite, backend: CPUBackend, test_tasks: TaskBatch, meta_train: MetaTrain
) -> None:
    torch.manual_seed(0)
    algo = IMAML(IMAMLHparams(meta_batch_size=10, meta_lr=0.003), suite.build_model(), suite, backend)
    tasks = test_tasks.slice(0, 30)
    before = _mean_mse(algo, tasks, 10)
    meta_train(algo, 60)
    after = _mean_mse(algo, tasks, 10)
    # Measured (seed 0): MSE after 10 test steps 3.68 -> 2.73 on these 30 tasks after 60 meta-iterations.
    assert (
        after[10] < 0.8 * before[10] and after[10] < after[0]
    )  # adaptation helps, and more than at the start
