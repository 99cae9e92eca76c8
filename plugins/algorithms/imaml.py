"""Implicit MAML: Rajeswaran, Finn, Kakade & Levine (2019), "Meta-Learning with Implicit Gradients",
NeurIPS (arXiv:1909.04630).

iMAML adapts to a task by (approximately) solving a proximally regularised problem,
phi*(theta) = argmin_phi L_support(phi) + lambda/2 ||phi - theta||^2 (section 3 of the paper), here by
`inner_steps` steps of gradient descent or Adam from phi = theta. Its meta-gradient does not
differentiate through those steps: at phi*, the stationarity condition gives d phi*/d theta =
(I + H/lambda)^-1 with H the Hessian of L_support at phi* (lemma 1), so each task's meta-gradient is
g = (I + H/lambda)^-1 grad L_query(phi*), computed by `cg_steps` iterations of conjugate gradient on
(I + H/lambda) g = grad L_query(phi*) with Hessian-vector products (the paper's algorithms 1 and 2). The
memory of the meta-gradient is that of one Hessian-vector product, whatever the number of inner steps
(the paper's table 1).

Written on `harness.functional`: parameters are dicts of tensors evaluated with
`torch.func.functional_call`; gradients come from `torch.func.grad`, Hessian-vector products from
`torch.func.vjp` of the gradient (linearised once at phi*, then reused by every CG step), and the tasks of
a meta-batch are vectorised with `torch.func.vmap` (CG runs a fixed number of iterations, so it has no
data-dependent control flow) or looped over; a looped conv net on the CPU goes through
`harness.sequential`'s forward with `torch.autograd` gradients and double-backward products instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness import RESULT_NEUTRAL, AlgorithmSpec, check_ranges, forward_attributes, hookimpl
from metaharness_plugins import hparams as shared

#: What stands for H in I + H / lam: the support loss's Hessian (the paper's equation) or its generalised
#: Gauss-Newton approximation (positive semi-definite, so CG stays well posed away from a minimum).
CURVATURES = ("hessian", "gauss-newton")
#: Inner-loop optimisers: plain gradient descent (the paper's "GD" variant) or Adam (Kingma & Ba 2015).
INNER_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class IMAMLHparams(shared.MAMLHparams):
    """iMAML's settings: MAML's (`shared.MAMLHparams`: inner_lr, inner_steps, test_steps, meta_lr,
    meta_batch_size, first_order) with their meaning for the proximal inner loop, plus the implicit
    gradient's.

    inner_lr / inner_steps: step size and number of steps of the inner optimiser on the regularised support
        loss L_support(phi) + lam/2 ||phi - theta||^2 at meta-train; test_steps: the same at meta-test.
        Defaults measured on sinusoid K = 10: 0.01 (MAML's alpha) for 10 steps; at 0.02 the inner loop of
        some tasks diverged after a few hundred meta-iterations.
    lam: the proximal regularisation strength lambda (the paper uses 2 on Omniglot; on sinusoid K = 10, after
        1000 meta-iterations, 1 gave MSE 1.22 against 1.62 for 2).
    cg_steps: conjugate-gradient iterations for (I + H/lam) g = grad L_query (5 in the paper's experiments).
    damping: Tikhonov damping mu added to the CG matrix, ((1 + mu) I + H/lam) g = grad L_query, as in
        Hessian-free optimisation (Martens 2010); 0 is the paper's equation.
    curvature: "hessian" (the paper's H, by Hessian-vector products) or "gauss-newton": H replaced by the
        generalised Gauss-Newton matrix G = J^T H_out J (Schraudolph 2002; Martens 2010), positive
        semi-definite, so I + G/lam is positive definite even where the inner loop stopped short of a
        minimum. There H can have curvature below -lam (measured on sinusoid: eigenvalues down to -16 with
        lam = 10), I + H/lam is indefinite, and CG's solution for one task was 18 times the exact one in
        norm; with Gauss-Newton each task's meta-gradient is at most its query gradient in norm. On sinusoid
        K = 10 it learned faster (MSE 0.76 against 0.93 after 2000 meta-iterations, README).
    inner_optimizer: "sgd" (gradient descent, the paper's GD variant) or "adam" (Adam with torch's default
        betas and epsilon, started afresh for every task).
    first_order: skip CG and use grad L_query(phi*) itself, i.e. (I + H/lam)^-1 replaced by I.
    vmap_tasks: vectorise the meta-batch's tasks with vmap (the same numbers as a Python loop, faster).
    """

    inner_lr: float = 0.01
    inner_steps: int = 10
    test_steps: int = 10
    lam: float = 1.0
    cg_steps: int = 5
    damping: float = 0.0
    curvature: str = "hessian"
    inner_optimizer: str = "sgd"
    vmap_tasks: bool = field(default=True, metadata=RESULT_NEUTRAL)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_one=("cg_steps",), positive=("lam",))
        if self.damping < 0:
            raise ValueError(
                f"damping must be >= 0 (0 solves the paper's equation exactly), got {self.damping!r}"
            )
        if self.curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {self.curvature!r}")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"inner_optimizer must be one of {', '.join(INNER_OPTIMIZERS)}, got {self.inner_optimizer!r}"
            )
        # Gradient descent on lam/2 ||phi - theta||^2 alone multiplies phi - theta by (1 - inner_lr * lam)
        # each step: it diverges from 2 on, whatever the task.
        if self.inner_optimizer == "sgd" and self.inner_lr * self.lam >= 2:
            raise ValueError(
                f"inner_lr * lam must be below 2 with inner_optimizer 'sgd' (gradient descent on the "
                f"proximal term alone diverges otherwise), got inner_lr={self.inner_lr!r}, "
                f"lam={self.lam!r}"
            )


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="imaml",
            factory="metaharness_plugins.algorithms._imaml:IMAML",
            hparams=IMAMLHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="iMAML: proximal inner loop, meta-gradient by conjugate gradient on the implicit "
            "equation",
            paper="Rajeswaran, Finn, Kakade & Levine 2019, Meta-Learning with Implicit Gradients (NeurIPS)",
            second_order=True,
        )
    ]


# The implementation lives in _imaml.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._imaml")
