"""iMAML itself, on harness.functional (the `imaml` plugin registers it; imported when a cell builds it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from harness import TaskSuite
from harness.functional import GradientAlgorithm, LossFn, Params, detached, over_tasks, snapshot
from harness.specs import TaskBatch

#: Adam's constants in the inner loop: torch.optim.Adam's defaults (Kingma & Ba 2015, algorithm 1).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    """The inner product of two parameter dicts (the sum over tensors of their element-wise products)."""
    return sum((a[name] * b[name]).sum() for name in a)  # type: ignore[return-value]


def loss_grad(loss: LossFn, *, autograd: bool, with_value: bool = False) -> Callable[..., Any]:
    """d loss / d params as a function of (params, x, y), without a graph to the inputs; with `with_value`,
    (gradient, loss value).

    `torch.func.grad` (vmap-able) by default; with `autograd`, `torch.autograd.grad` on fresh leaves, which
    `harness.sequential`'s autograd Functions need (zeros for a tensor the loss does not use).
    """
    if not autograd:
        return torch.func.grad_and_value(loss) if with_value else torch.func.grad(loss)

    def grad_fn(params: Params, x: Tensor, y: Tensor) -> Params | tuple[Params, Tensor]:
        leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
        with torch.enable_grad():
            value = loss(leaves, x, y)
            grads = torch.autograd.grad(
                value, list(leaves.values()), allow_unused=True, materialize_grads=True
            )
        grads = dict(zip(leaves, grads))
        return (grads, value.detach()) if with_value else grads

    return grad_fn


def proximal_descent(
    loss: LossFn,
    theta: Params,
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    lam: float,
    optimizer: str = "sgd",
    *,
    autograd: bool = False,
) -> Iterator[Params]:
    """The iterates 0..steps of an optimiser on loss(phi, x, y) + lam/2 ||phi - theta||^2 from phi = theta
    (iMAML's inner problem), none of them differentiable w.r.t. theta.

    `optimizer` is "sgd" (phi <- phi - lr * g) or "adam" (Kingma & Ba's algorithm 1 with bias correction and
    torch.optim.Adam's defaults, moments starting at zero), g being the regularised objective's gradient.
    A generator, so a caller that needs only the last iterate holds one at a time.
    """
    grad_fn = loss_grad(loss, autograd=autograd)
    theta = detached(theta)
    phi = dict(theta)
    yield phi
    first = {name: torch.zeros_like(p) for name, p in theta.items()} if optimizer == "adam" else {}
    second = dict(first)
    (beta1, beta2) = ADAM_BETAS
    for step in range(1, steps + 1):
        grads = grad_fn(phi, x, y)
        grads = {name: grads[name] + lam * (phi[name] - theta[name]) for name in phi}
        if optimizer == "adam":
            first = {name: beta1 * first[name] + (1 - beta1) * g for name, g in grads.items()}
            second = {name: beta2 * second[name] + (1 - beta2) * g * g for name, g in grads.items()}
            correction1, correction2 = 1 - beta1**step, 1 - beta2**step
            phi = {
                name: p - lr * (first[name] / correction1) / ((second[name] / correction2).sqrt() + ADAM_EPS)
                for name, p in phi.items()
            }
        else:
            phi = {name: p - lr * grads[name] for name, p in phi.items()}
        yield phi


def hessian_vector_product(
    loss: LossFn, phi: Params, x: Tensor, y: Tensor, *, autograd: bool = False
) -> tuple[Params, Callable[[Params], Params]]:
    """(grad loss(phi), v -> H v) with H the Hessian of loss(., x, y) at phi.

    The gradient is linearised once (`torch.func.vjp` of `torch.func.grad`, or a `create_graph` gradient with
    `autograd`) and every product reuses that graph: reverse-over-reverse, H being symmetric, so a product
    costs one backward pass and the memory is that of one gradient evaluation.
    """
    if not autograd:
        grad, vjp_fn = torch.func.vjp(lambda p: torch.func.grad(loss)(p, x, y), phi)
        return grad, lambda v: vjp_fn(v)[0]
    leaves = {name: p.detach().requires_grad_() for name, p in phi.items()}
    with torch.enable_grad():
        grads = torch.autograd.grad(
            loss(leaves, x, y),
            list(leaves.values()),
            create_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
    linked = [(g, name) for g, name in zip(grads, leaves) if g.requires_grad]

    def hvp(v: Params) -> Params:
        if not linked:  # a loss linear in every parameter has no curvature
            return {name: torch.zeros_like(p) for name, p in leaves.items()}
        products = torch.autograd.grad(
            [g for g, _ in linked],
            list(leaves.values()),
            grad_outputs=[v[name] for _, name in linked],
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        return dict(zip(leaves, products))

    return {name: g.detach() for name, g in zip(leaves, grads)}, hvp


def gauss_newton_vector_product(
    forward: Callable[[Params, Tensor], Tensor],
    out_loss: Callable[[Tensor, Tensor], Tensor],
    phi: Params,
    x: Tensor,
    y: Tensor,
    *,
    autograd: bool = False,
) -> tuple[Params, Callable[[Params], Params]]:
    """(grad loss(phi), v -> G v) with G = J^T H_out J the generalised Gauss-Newton matrix of
    loss = out_loss(forward(phi, x), y) at phi: J the Jacobian of the outputs, H_out the loss's Hessian in
    the outputs (Schraudolph 2002; Martens 2010). G is positive semi-definite for a loss convex in the
    outputs (MSE, cross-entropy), so I + G / lam is positive definite wherever phi is, unlike I + H / lam.

    Only reverse mode is used (forward-mode AD would do J v too, but harness.sequential's autograd Functions
    have no forward formulas): J v by the double-vjp trick (the derivative of the linear map u -> J^T u,
    with `torch.func.vjp`, or `torch.autograd.grad` with `autograd`), H_out (J v) by reverse-over-reverse on
    the small output space, and J^T (.) by the vector-Jacobian product; each is linearised once at phi and
    reused by every CG step.
    """
    if not autograd:
        out, vjp_fn = torch.func.vjp(lambda p: forward(p, x), phi)
        # H_out is symmetric: its products are vector-Jacobian products of the output gradient; u -> J^T u is
        # linear, so J v is the vector-Jacobian product of that map with v. Each is linearised once.
        out_grad, out_hvp = torch.func.vjp(torch.func.grad(lambda o: out_loss(o, y)), out)
        _, jacobian_vp = torch.func.vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(out))
        grad = vjp_fn(out_grad)[0]

        def gnvp(v: Params) -> Params:
            (jv,) = jacobian_vp(v)
            return vjp_fn(out_hvp(jv)[0])[0]

        return grad, gnvp
    leaves = {name: p.detach().requires_grad_() for name, p in phi.items()}
    params = list(leaves.values())
    with torch.enable_grad():
        out = forward(leaves, x)
        (out_grad,) = torch.autograd.grad(out_loss(out, y), out, create_graph=True)
        grads = torch.autograd.grad(
            out, params, out_grad.detach(), retain_graph=True, allow_unused=True, materialize_grads=True
        )
        probe = torch.zeros_like(out, requires_grad=True)
        transposed = torch.autograd.grad(
            out, params, probe, create_graph=True, allow_unused=True, materialize_grads=True
        )
    linked = [(t, name) for t, name in zip(transposed, leaves) if t.requires_grad]

    def gnvp_autograd(v: Params) -> Params:
        (jv,) = torch.autograd.grad(
            [t for t, _ in linked], probe, [v[name] for _, name in linked], retain_graph=True
        )
        (hjv,) = torch.autograd.grad(out_grad, out, jv, retain_graph=True)
        products = torch.autograd.grad(
            out, params, hjv, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        return dict(zip(leaves, products))

    return dict(zip(leaves, grads)), gnvp_autograd


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """x ~ A^-1 b after `steps` conjugate-gradient iterations from x = 0 (Hestenes & Stiefel 1952), A given
    by its product `matvec` and assumed symmetric positive definite.

    There is no data-dependent control flow, so it runs under vmap: a step whose direction has no positive
    curvature (p^T A p <= 0: an indefinite A, or exact convergence, r = 0) switches the iteration off for
    good and the current iterate is returned, as truncated CG does (Steihaug 1983).
    """
    x = {name: torch.zeros_like(t) for name, t in b.items()}
    r, p = dict(b), dict(b)
    rr = dot(r, r)
    active = torch.ones_like(rr, dtype=torch.bool)
    zero = torch.zeros_like(rr)
    for _ in range(steps):
        ap = matvec(p)
        curvature = dot(p, ap)
        active = active & (curvature > 0)
        alpha = torch.where(active, rr / curvature, zero)
        x = {name: x[name] + alpha * p[name] for name in x}
        r = {name: r[name] - alpha * ap[name] for name in r}
        rr_next = dot(r, r)
        beta = torch.where(active & (rr > 0), rr_next / rr, zero)
        p = {name: r[name] + beta * p[name] for name in p}
        rr = rr_next
    return x


class IMAML(GradientAlgorithm):
    """iMAML: a meta-learned initialisation theta, a proximal inner loop towards it, implicit meta-gradients.

    The meta-parameters are the model's own `nn.Parameter`s. The meta-gradient of one task is computed
    explicitly (no autograd graph links it to theta) and averaged over the meta-batch; Adam steps on it.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        #: Mean norm over tasks of the regularised support loss's gradient where the inner loop stopped, at
        #: the first and the latest meta-iteration: how far phi is from the assumed phi*.
        self._stationarity: list[float] = []

    @property
    def second_order(self) -> bool:  # type: ignore[override]
        return not self.hparams.first_order

    def task_meta_gradient(
        self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
    ) -> tuple[Tensor, Params, Tensor]:
        """(query loss at phi, the task's implicit meta-gradient, norm of the proximal gradient at phi) for
        one task, phi being the inner loop's last iterate (what over_tasks stacks, looped or vmapped)."""
        hp, autograd = self.hparams, self.fast_forward is not None
        theta = detached(self.params)
        phi = theta
        # Only the last iterate is kept: memory does not grow with the number of inner steps.
        for phi in proximal_descent(
            self.train_loss,
            theta,
            sx,
            sy,
            hp.inner_steps,
            hp.inner_lr,
            hp.lam,
            hp.inner_optimizer,
            autograd=autograd,
        ):
            pass
        query_grad, query_loss = loss_grad(self.train_loss, autograd=autograd, with_value=True)(phi, qx, qy)
        if hp.first_order:
            support_grad = loss_grad(self.train_loss, autograd=autograd)(phi, sx, sy)
        elif hp.curvature == "gauss-newton":
            support_grad, hvp = gauss_newton_vector_product(
                self.train_forward, self.suite.loss, phi, sx, sy, autograd=autograd
            )
        else:
            support_grad, hvp = hessian_vector_product(self.train_loss, phi, sx, sy, autograd=autograd)
        stationarity = {name: support_grad[name] + hp.lam * (phi[name] - theta[name]) for name in phi}
        residual = dot(stationarity, stationarity).sqrt()
        if hp.first_order:
            return query_loss, query_grad, residual

        def matvec(v: Params) -> Params:
            hv = hvp(v)
            return {name: (1 + hp.damping) * v[name] + hv[name] / hp.lam for name in v}

        return query_loss, conjugate_gradient(matvec, query_grad, hp.cg_steps), residual

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(mean query loss, mean implicit meta-gradient) over the batch's tasks; no `.grad` set, no step."""
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        losses, grads, residuals = over_tasks(self.task_meta_gradient, tensors, vmap=self.vmap_tasks)
        self._stationarity.append(float(residuals.mean()))
        if len(self._stationarity) > 2:
            del self._stationarity[1]
        return float(losses.mean()), {name: g.mean(dim=0) for name, g in grads.items()}

    def train_forward(self, params: Params, x: Tensor) -> Tensor:
        """The model's outputs as meta-training computes them (`fast_forward` when there is one, as
        `train_loss`)."""
        fast = self.fast_forward
        return torch.func.functional_call(self.model, params, (x,)) if fast is None else fast(params, x)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """The inner loop's iterates 0..steps on one task (regularised towards theta, as at meta-train);
        detached, fine under `torch.no_grad()`."""
        hp = self.hparams
        return list(
            proximal_descent(
                self.loss,
                snapshot(self.params),
                support_x,
                support_y,
                steps,
                hp.inner_lr,
                hp.lam,
                hp.inner_optimizer,
            )
        )

    def describe(self) -> dict[str, Any]:
        hp = self.hparams
        info: dict[str, Any] = {
            "meta_gradient": "first-order"
            if hp.first_order
            else f"conjugate gradient on I + {hp.curvature} / lam, {hp.cg_steps} steps"
        }
        if self._stationarity:
            info["inner_gradient_norm"] = {"first": self._stationarity[0], "last": self._stationarity[-1]}
        return info
