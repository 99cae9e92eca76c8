"""The functional base of gradient-based meta-learners: parameter dicts, inner loops, tasks, meta-updates.

Native MAML, first-order MAML, Meta-SGD, ANIL, Reptile and the peer libraries' plugins are written on
it, and a plugin author's own algorithm can be too (the README's one-file example). Parameters are
plain dicts `{name: tensor}` evaluated with `torch.func.functional_call`; nothing patches a module.

Two bases, one per way of computing a meta-gradient:

- `GradientAlgorithm`: the meta-loss of a whole meta-batch is one differentiable scalar
  (`meta_loss`, by default the mean of `task_loss` over the tasks, looped or `vmap`-ed with
  `over_tasks`); `meta_gradient` differentiates it with `torch.autograd.grad`, `meta_train_step` hands
  the gradient to the optimiser (Adam at `hparams.meta_lr` unless `make_optimizer` says otherwise).
- `TaskLoopAlgorithm`: as learn2learn's, higher's and TorchOpt's examples write it, each task's query
  loss is back-propagated (divided by the number of tasks) as soon as it is computed, so one task's
  graph is alive at a time; then one optimiser step on the accumulated `.grad`.

Free functions for the pieces: `detached`, `snapshot`, `sgd_step`, `inner_loop`, `over_tasks`,
`gradients`, `optimizer_step`, `backward_per_task`. `harness.sequential` adds a faster forward of
`nn.Sequential` conv nets for second-order inner loops (MAML and Meta-SGD use it on the CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_map

from harness.base import Algorithm, TaskSuite
from harness.sequential import SequentialForward
from harness.specs import TaskBatch

#: A parameter dict: name (as `nn.Module.named_parameters` spells it) -> tensor.
Params = dict[str, Tensor]
#: loss(params, x, y) -> scalar tensor: what an inner loop differentiates.
LossFn = Callable[[Params, Tensor, Tensor], Tensor]

__all__ = [
    "GradientAlgorithm",
    "LossFn",
    "Params",
    "TaskLoopAlgorithm",
    "backward_per_task",
    "detached",
    "gradients",
    "inner_loop",
    "optimizer_step",
    "over_tasks",
    "sgd_step",
    "snapshot",
]


# --- parameter dicts --------------------------------------------------------------------------------


def detached(params: Mapping[str, Tensor]) -> Params:
    """The same tensors cut from the autograd graph (views sharing storage, no copy)."""
    return {name: tensor.detach() for name, tensor in params.items()}


def snapshot(params: Mapping[str, Tensor]) -> Params:
    """Detached copies: a starting state that later updates of the meta-parameters leave unchanged
    (what `adapt` starts from)."""
    return {name: tensor.detach().clone() for name, tensor in params.items()}


def sgd_step(
    params: Mapping[str, Tensor], grads: Mapping[str, Tensor], lr: float | Mapping[str, Tensor]
) -> Params:
    """One SGD step `p - lr * g` per tensor; `lr` is a number, or a dict of per-tensor rates of the
    parameters' shapes (Meta-SGD's learned alpha, applied element-wise)."""
    if isinstance(lr, Mapping):
        return {name: p - lr[name] * grads[name] for name, p in params.items()}
    return {name: p - lr * grads[name] for name, p in params.items()}


def inner_loop(
    loss: LossFn,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    first_order: bool = False,
    autograd: bool = False,
) -> list[Params]:
    """The states after 0..steps SGD steps on `loss(params, x, y)` (MAML's equation 1): steps+1 dicts.

    Gradients come from `torch.func.grad`, which composes with an outer `torch.autograd` or `vmap`
    and works under the caller's `torch.no_grad()`. By default every step stays differentiable with
    respect to `params` (and `lr` when it is a tensor dict), second derivatives included: full MAML.
    With `first_order` each inner gradient is a constant, evaluated on detached copies so that the
    unused higher-order graph is never built (first-order MAML, Reptile, and test-time adaptation);
    the states then still depend on `params` through the update itself.

    With `autograd` the gradients come from `torch.autograd.grad` (`create_graph` unless first order)
    instead: no functorch overhead, and it works with custom autograd Functions such as
    `harness.sequential`'s, but it does not compose with `vmap`, and the second-order path needs
    `params` that require grad (the meta-parameters themselves).
    """
    grad_fn = _autograd_grad(loss, first_order) if autograd else torch.func.grad(loss)
    states = [dict(params)]
    current = states[0]
    for _ in range(steps):
        if first_order:
            grads = detached(grad_fn(detached(current), x.detach(), y))
        else:
            grads = grad_fn(current, x, y)
        current = sgd_step(current, grads, lr)
        states.append(current)
    return states


def _autograd_grad(loss: LossFn, first_order: bool) -> Callable[[Params, Tensor, Tensor], Params]:
    """d loss / d params with torch.autograd (zeros for unused tensors); first order: on fresh leaves."""

    def grad_fn(params: Params, x: Tensor, y: Tensor) -> Params:
        with torch.enable_grad():
            if first_order:
                params = {name: p.detach().requires_grad_() for name, p in params.items()}
            value = loss(params, x, y)
            grads = torch.autograd.grad(value, list(params.values()), create_graph=not first_order,
                                        allow_unused=True, materialize_grads=True)
        return dict(zip(params, grads))

    return grad_fn


# --- tasks of a meta-batch --------------------------------------------------------------------------


def has_batch_norm(model: nn.Module) -> bool:
    """Whether `model` holds a batch norm layer (any of `torch.nn`'s)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def over_tasks(fn: Callable[..., Any], tensors: Sequence[Tensor], *, vmap: bool = False) -> Any:
    """`fn(*(t[i] for t in tensors))` for every task i, the results stacked along a new leading dim.

    `fn` may return a tensor or any pytree of them (a dict, a tuple); each leaf is stacked. With `vmap`
    the tasks are vectorised by `torch.func.vmap` (one call, batched kernels; `fn` must be vmap-safe),
    otherwise a Python loop calls `fn` once per task. Both give the same numbers up to float rounding;
    which is faster depends on the model and the device: measure (on CPU the loop often wins for convs).
    Whatever `fn` closes over (the meta-parameters) is shared by every task.
    """
    if vmap:
        return torch.func.vmap(fn)(*tensors)
    results = [fn(*(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
    return tree_map(lambda *leaves: torch.stack(leaves), *results)


def backward_per_task(
    task_loss: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], batch: TaskBatch
) -> float:
    """Back-propagate `task_loss(sx, sy, qx, qy) / n` for each of the n tasks as soon as it is computed,
    accumulating into the leaves' `.grad` (one task's graph alive at a time); returns the mean loss."""
    total = torch.zeros((), device=batch.support_x.device)
    n = batch.num_tasks
    for i in range(n):
        loss = task_loss(batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i])
        (loss / n).backward()
        total = total + loss.detach()
    return float(total) / n


# --- the meta-update --------------------------------------------------------------------------------


def gradients(loss: Tensor, params: Mapping[str, Tensor]) -> Params:
    """d loss / d params by name (`torch.autograd.grad`; zeros for a tensor the loss does not use),
    leaving every `.grad` untouched."""
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(params, grads))


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]
) -> None:
    """One step of `optimizer` on the given gradients (set as `.grad`, then cleared to None)."""
    for name, p in params.items():
        p.grad = grads[name]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# --- the bases --------------------------------------------------------------------------------------


class GradientAlgorithm(Algorithm):
    """A meta-learner whose meta-parameters are trained by an optimiser on a differentiable meta-loss.

    Holds `self.model` (moved to the backend's device) and `self.params`, its parameters by name (the
    `nn.Parameter`s themselves: the meta-parameters unless `meta_parameters` adds more). A subclass
    supplies `task_loss(sx, sy, qx, qy)` (one task's query loss after adapting to its support set,
    reading the meta-parameters from `self`) or overrides `meta_loss(batch)`, plus `adapt`. It gets:
    `loss(params, x, y)`, `predict(state, x)` through `functional_call`, `train_loss` (`loss` through
    `fast_forward`, `harness.sequential`'s, where that applies), `meta_loss` (the mean task
    loss; vmapped when `hparams.vmap_tasks` is true), `meta_gradient(batch) -> (loss, grads)`, and
    `meta_train_step` (one optimiser step on that gradient). The optimiser is made on first use by
    `make_optimizer` (Adam at `hparams.meta_lr` over `meta_parameters()`), so a subclass can add
    meta-parameters (Meta-SGD's learning rates) in its `__init__` after calling this one's.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        self.model = model.to(self.device)
        self.params: Params = dict(self.model.named_parameters())

    # --- what is learned, and how ---

    def meta_parameters(self) -> Params:
        return dict(self.params)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimiser: Adam at `hparams.meta_lr` over `meta_parameters()` (override for another)."""
        return torch.optim.Adam(self.meta_parameters().values(), lr=self.hparams.meta_lr)

    @functools.cached_property
    def optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimiser, made by `make_optimizer` on first use."""
        return self.make_optimizer()

    #: Whether the meta-gradient differentiates the inner gradients (second order); subclasses say.
    second_order: bool = False

    @property
    def vmap_tasks(self) -> bool:
        """Whether `meta_loss` vectorises tasks with vmap: `hparams.vmap_tasks` when it has one, else False,
        and never for a second-order meta-gradient through batch norm. There `torch.func.vmap` gets the
        second derivatives wrong (float64, a conv, batch norm, two inner steps: 1e-3 off the task loop,
        which matches finite differences; PyTorch's batch-norm batching rule, cf. pytorch/functorch#534),
        so such tasks are looped: the same numbers vmap would give if it were right, only slower."""
        wanted = bool(getattr(self.hparams, "vmap_tasks", False))
        return wanted and not (self.second_order and has_batch_norm(self.model))

    # --- the model, functionally ---

    def loss(self, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """The suite's loss of the model evaluated with `params` on (x, y)."""
        return self.suite.loss(functional_call(self.model, dict(params), (x,)), y)

    def predict(self, state: Any, x: Tensor) -> Tensor:
        """The model's output with the parameter dict `state` (an adapted state from `adapt`)."""
        return functional_call(self.model, state, (x,))

    @functools.cached_property
    def fast_forward(self) -> SequentialForward | None:
        """`harness.sequential`'s forward of the model, used by `train_loss`, when tasks are looped over
        (not vmapped) on the CPU and the model is a conv net it supports; else None. Its inner loops then
        need `inner_loop(..., autograd=True)`."""
        if self.vmap_tasks or self.device.type != "cpu":
            return None
        return SequentialForward.of(self.model)

    def train_loss(self, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """`loss` as meta-training computes it: through `fast_forward` when there is one (equal in exact
        arithmetic, faster to differentiate twice), else through `functional_call`."""
        fast = self.fast_forward
        return self.loss(params, x, y) if fast is None else self.suite.loss(fast(params, x), y)

    # --- meta-training ---

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """One task's query loss after adapting to its support set, differentiable w.r.t. the
        meta-parameters; a subclass defines it unless it overrides `meta_loss`."""
        raise NotImplementedError(f"{type(self).__name__} defines neither task_loss nor meta_loss")

    def meta_loss(self, batch: TaskBatch) -> Tensor:
        """The mean of `task_loss` over the batch's tasks (a differentiable scalar).

        MAML's algorithm 2 sums over tasks, its code averages; Adam's step is (up to its epsilon)
        invariant to that rescaling, and the mean keeps the loss comparable across batch sizes.
        """
        tensors = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        return over_tasks(self.task_loss, tensors, vmap=self.vmap_tasks).mean()

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, d meta-loss / d meta-parameters by name) on `batch`; no `.grad` set, no step."""
        loss = self.meta_loss(batch)
        return float(loss.detach()), gradients(loss, self.meta_parameters())

    def meta_train_step(self, batch: TaskBatch) -> float:
        """One optimiser step on `meta_gradient(batch)`; returns the meta-loss before the step."""
        loss, grads = self.meta_gradient(batch)
        optimizer_step(self.optimizer, self.meta_parameters(), grads)
        return loss


class TaskLoopAlgorithm(GradientAlgorithm):
    """A `GradientAlgorithm` whose meta-gradient is accumulated task by task, as learn2learn's, higher's
    and TorchOpt's examples compute it: `task_loss(...) / n` back-propagated into `.grad` as soon as each
    task's loss exists (`backward_per_task`), so memory holds one task's graph; then one optimiser step.
    The gradient is the same mean over tasks as `GradientAlgorithm`'s. For module-based inner loops
    (cloned or patched modules) that cannot be vmapped; `task_loss` must be defined.
    """

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, accumulated gradient by name, zeros where none reached); `.grad` cleared after."""
        params = self.meta_parameters()
        self.optimizer.zero_grad(set_to_none=True)
        loss = backward_per_task(self.task_loss, batch)
        grads = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in params.items()}
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grads

    def meta_train_step(self, batch: TaskBatch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = backward_per_task(self.task_loss, batch)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss
