"""The learned optimisers themselves (the `learned_optimizers` plugin registers them; imported when a cell
builds one). See `learned_optimizers.py` for the papers, the meta-training scheme and what happens when
a test problem has another dimension than the training ones.

The problems of a meta-batch are optimised together: their parameters are stacked along a leading
problem dimension ({name: [B, *shape]}), their objectives summed for one `torch.autograd.grad` call per
step (the problems are independent, so each problem's slice of the gradient is its own gradient), and
the update rules act on the stacked tensors at once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from harness.base import Algorithm, TaskSuite
from harness.functional import Params, gradients, optimizer_step, snapshot
from harness.specs import TaskBatch
from metaharness_plugins.optimisation import PROBLEM_METHODS, check_problem_suite

#: {name: [B, *shape]}: the parameters of B problems of the same shapes, stacked.
Stacked = dict[str, Tensor]


def preprocess_gradient(grad: Tensor, p: float) -> Tensor:
    """Andrychowicz et al.'s gradient preprocessing (appendix A), a trailing dimension of 2 added:
    (log|g| / p, sign g) where |g| >= e^-p, else (-1, e^p g). Both branches are finite everywhere
    (|g| is clamped before the log) so that a second-order backward never meets 0 * inf."""
    magnitude = grad.abs()
    large = magnitude >= math.exp(-p)
    first = torch.where(large, torch.log(magnitude.clamp_min(math.exp(-p))) / p, torch.full_like(grad, -1.0))
    second = torch.where(large, torch.sign(grad), math.exp(p) * grad)
    return torch.stack([first, second], dim=-1)


def _key(name: str) -> str:
    """A parameter name as an nn.Module attribute / ParameterDict key can spell it (no dots)."""
    return name.replace(".", "__")


def _broadcast(value: Tensor, like: Tensor) -> Tensor:
    """A per-problem [B] tensor shaped to multiply a stacked [B, *shape] one."""
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim()))


class UnrolledOptimizer(Algorithm):
    """A learned update rule meta-trained through unrolled optimisation (truncated BPTT).

    Subclasses build `self.net` (an nn.Module holding every meta-parameter) in `build` and define the
    update: `init_state(params)` and `update(params, grads, state, t) -> (params, state)` on stacked
    tensors, differentiable with respect to `self.net`'s parameters.
    """

    def __init__(self, hparams: Any, model: nn.Module, suite: TaskSuite, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        check_problem_suite(type(self).__name__, suite, PROBLEM_METHODS)  # predict is optional here
        # One training problem, drawn from its own generator (the cell's train stream is untouched), tells
        # the parameter names, shapes and dtype the optimiser is built for.
        probe_batch = suite.sample(1, torch.Generator().manual_seed(0), "train")
        probe = suite.initial_parameters(probe_batch.support_x[0])
        self.names = list(probe)
        self.alias = {name: name for name in self.names}
        self.dtype = next(iter(probe.values())).dtype
        self.net = self.build(probe)
        self.net.to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=hparams.meta_lr)

    def build(self, probe: Params) -> nn.Module:
        """The module of meta-parameters, for problems shaped like `probe`."""
        raise NotImplementedError

    def init_state(self, params: Stacked) -> Any:
        """The optimiser's state before the first step (a pytree of tensors)."""
        raise NotImplementedError

    def update(self, params: Stacked, grads: Stacked, state: Any, t: int) -> tuple[Stacked, Any]:
        """Step t (0-based) of the learned optimiser: the new parameters and state."""
        raise NotImplementedError

    # --- the harness's interface ------------------------------------------------------------------

    @property
    def test_steps(self) -> int:
        """The suite's test horizon (the runner prefers the suite's `adaptation_steps` when it says one)."""
        return int(self.suite.horizon("test"))

    def meta_parameters(self) -> dict[str, Tensor]:
        return dict(self.net.named_parameters())

    def predict(self, state: Params, x: Tensor) -> Tensor:
        """The optimizee's outputs when the suite says how to compute them (`suite.predict(params, x)`),
        else its parameters flattened: an optimisation suite scores the state itself (its objective)."""
        if callable(getattr(self.suite, "predict", None)):
            return self.suite.predict(state, x)
        return torch.cat([t.reshape(-1) for t in state.values()])

    def meta_train_step(self, batch: TaskBatch) -> float:
        """One whole training trajectory of `suite.horizon("train")` steps on the batch's problems, in
        truncations of `unroll` steps, one Adam step on the optimiser after each; returns the mean
        objective over the trajectory's steps 1..T and the problems."""
        x, y = batch.support_x, batch.support_y
        horizon, unroll = int(self.suite.horizon("train")), self.hparams.unroll
        with torch.no_grad():
            params = self.initial(x)
        state = self.init_state(params)
        total, t = 0.0, 0
        while t < horizon:
            steps = min(unroll, horizon - t)
            params = {name: p.detach().requires_grad_() for name, p in params.items()}
            state = tree_map(lambda s: s.detach(), state)  # truncated back-propagation through time
            loss, params, state = self.truncation(x, y, params, state, t, steps)
            optimizer_step(self.optimizer, self.meta_parameters(), gradients(loss, self.meta_parameters()))
            total += float(loss.detach()) * steps
            t += steps
        return total / horizon

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """The parameters theta_0..theta_steps of the learned optimiser on one problem (detached)."""
        x, y = support_x.unsqueeze(0), support_y.unsqueeze(0)
        with torch.no_grad():
            params = self.initial(x)
            state = self.init_state(params)
        states = [{name: p[0].clone() for name, p in params.items()}]
        for t in range(steps):
            with torch.enable_grad():
                leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
                grads = dict(zip(leaves, torch.autograd.grad(self.objectives(leaves, x, y).sum(),
                                                             list(leaves.values()), allow_unused=True,
                                                             materialize_grads=True)))
            with torch.no_grad():
                params, state = self.update(params, grads, state, t)
            states.append({name: p[0] for name, p in params.items()})
        return states

    # --- the unroll ---------------------------------------------------------------------------------

    def initial(self, x: Tensor) -> Stacked:
        """theta_0 of each problem of `x` (leading problem dim), stacked, on the optimiser's device; sets
        `self.alias` (see `match_names`) for the per-tensor optimisers."""
        per = [self.suite.initial_parameters(x[b]) for b in range(x.shape[0])]
        self.alias = self.match_names(list(per[0]))
        return {name: torch.stack([p[name] for p in per]).to(self.device) for name in per[0]}

    def match_names(self, names: list[str]) -> dict[str, str]:
        """Which meta-trained tensor each of a problem's tensors uses: its own name when every name was
        seen at meta-train; otherwise the one tensor when meta-training had one (a quadratic's `theta` for a
        logistic test problem's `w`, or for every tensor of an MLP); otherwise by position when the numbers
        of tensors agree. Anything else is an error naming both lists."""
        if all(name in self.names for name in names):
            return {name: name for name in names}
        if len(self.names) == 1:
            return {name: self.names[0] for name in names}
        if len(self.names) == len(names):
            return dict(zip(names, self.names))
        raise ValueError(f"{type(self).__name__} was meta-trained on parameters {self.names} and cannot "
                         f"match this problem's {names} to them (not the same names, nor as many tensors)")

    def objectives(self, params: Stacked, x: Tensor, y: Tensor) -> Tensor:
        """Each problem's objective at its parameters: a [B] tensor."""
        return torch.stack([self.suite.objective({name: p[b] for name, p in params.items()}, x[b], y[b])
                            for b in range(x.shape[0])])

    def truncation(self, x: Tensor, y: Tensor, params: Stacked, state: Any, t0: int, steps: int
                   ) -> tuple[Tensor, Stacked, Any]:
        """`steps` optimisation steps from `params` (which must require grad) starting at step t0: the
        meta-loss (mean objective over steps t0+1..t0+steps and the problems; the paper's equation 3 with
        w_t = 1), the last parameters and state, all differentiable with respect to the meta-parameters.
        Without `second_order` the optimizee's gradient is a constant of the graph (paper's figure 2)."""
        second_order = bool(getattr(self.hparams, "second_order", False))
        losses = []
        for k in range(steps):
            value = self.objectives(params, x, y)
            if k > 0:
                losses.append(value)  # f(theta_{t0+k}), reused from the gradient's evaluation
            grads = torch.autograd.grad(value.sum(), list(params.values()), create_graph=second_order,
                                        retain_graph=True, allow_unused=True, materialize_grads=True)
            params, state = self.update(params, dict(zip(params, grads)), state, t0 + k)
        losses.append(self.objectives(params, x, y))
        return torch.stack(losses).mean(), params, state

    def _chosen(self, values: dict[str, Tensor]) -> dict[str, float]:
        """Learned per-tensor hyper-parameters for the record: `lr` for one tensor, else `lr[name]`."""
        out = {}
        for label, per_name in values.items():
            for name, value in per_name.items():
                out[label if len(per_name) == 1 else f"{label}[{name}]"] = round(float(value.detach()), 6)
        return out


# --- Andrychowicz et al.'s coordinate-wise LSTM -----------------------------------------------------------


class _CoordinateLSTM(nn.Module):
    """Two LSTM layers and a linear output, applied to every coordinate independently (shared weights)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.cell1 = nn.LSTMCell(2, hidden)
        self.cell2 = nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, 1)


class LSTMOptimizer(UnrolledOptimizer):
    """theta_{t+1} = theta_t + output_scale * m(preprocess(grad_t), h_t) for every coordinate (eq. 1)."""

    def build(self, probe: Params) -> nn.Module:
        return _CoordinateLSTM(self.hparams.hidden)

    def init_state(self, params: Stacked) -> tuple[Tensor, ...]:
        n = sum(p.numel() for p in params.values())
        first = next(iter(params.values()))
        zeros = first.new_zeros(n, self.hparams.hidden)
        return (zeros, zeros, zeros, zeros)

    def update(self, params: Stacked, grads: Stacked, state: tuple[Tensor, ...], t: int
               ) -> tuple[Stacked, tuple[Tensor, ...]]:
        flat = torch.cat([grads[name].reshape(-1) for name in params])
        h1, c1, h2, c2 = state
        h1, c1 = self.net.cell1(preprocess_gradient(flat, self.hparams.preprocess_p), (h1, c1))
        h2, c2 = self.net.cell2(h1, (h2, c2))
        step = self.hparams.output_scale * self.net.out(h2).squeeze(-1)
        new, start = {}, 0
        for name, p in params.items():
            new[name] = p + step[start:start + p.numel()].reshape(p.shape)
            start += p.numel()
        return new, (h1, c1, h2, c2)


# --- per-tensor learned step sizes: SGD with momentum, Adam ---------------------------------------------


class _PerTensor(nn.Module):
    """One ParameterDict per learned hyper-parameter, each keyed by the optimizee tensor's name."""

    def __init__(self, names: list[str], **initial: float) -> None:
        super().__init__()
        for label, value in initial.items():
            values = {_key(n): nn.Parameter(torch.tensor(value)) for n in names}
            setattr(self, label, nn.ParameterDict(values))

    def get(self, label: str, name: str) -> Tensor:
        """The learned `label` of the meta-trained tensor `name`."""
        return getattr(self, label)[_key(name)]


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class MetaSGDOptimizer(UnrolledOptimizer):
    """theta <- theta - exp(a_n) v, v <- sigmoid(b_n) v + g (b_n absent without momentum), per tensor n."""

    def build(self, probe: Params) -> nn.Module:
        initial = {"log_lr": math.log(self.hparams.lr_init)}
        if self.hparams.momentum:
            # sigmoid(b) = momentum_init; a momentum of exactly 0 maps to a very negative logit.
            initial["logit_momentum"] = _logit(max(self.hparams.momentum_init, 1e-6))
        return _PerTensor(self.names, **initial)

    def init_state(self, params: Stacked) -> Stacked:
        return {name: torch.zeros_like(p) for name, p in params.items()}

    def update(self, params: Stacked, grads: Stacked, state: Stacked, t: int) -> tuple[Stacked, Stacked]:
        new, velocity = {}, {}
        for name, p in params.items():
            v = grads[name]
            if self.hparams.momentum:
                v = torch.sigmoid(self.net.get("logit_momentum", self.alias[name])) * state[name] + v
            velocity[name] = v
            new[name] = p - torch.exp(self.net.get("log_lr", self.alias[name])) * v
        return new, velocity

    def describe(self) -> dict[str, Any]:
        values = {"lr": {n: torch.exp(self.net.get("log_lr", n)) for n in self.names}}
        if self.hparams.momentum:
            values["momentum"] = {n: torch.sigmoid(self.net.get("logit_momentum", n)) for n in self.names}
        return {"chosen": self._chosen(values)}


class LearnedAdam(UnrolledOptimizer):
    """Adam (Kingma & Ba, algorithm 1, bias-corrected): lr = exp(a_n), beta_i = sigmoid(b_i,n), tensor n."""

    def build(self, probe: Params) -> nn.Module:
        hp = self.hparams
        return _PerTensor(self.names, log_lr=math.log(hp.lr_init), logit_beta1=_logit(hp.beta1_init),
                          logit_beta2=_logit(hp.beta2_init))

    def init_state(self, params: Stacked) -> tuple[Stacked, Stacked]:
        return ({name: torch.zeros_like(p) for name, p in params.items()},
                {name: torch.zeros_like(p) for name, p in params.items()})

    def update(self, params: Stacked, grads: Stacked, state: tuple[Stacked, Stacked], t: int
               ) -> tuple[Stacked, tuple[Stacked, Stacked]]:
        first, second = state
        new, m_new, v_new = {}, {}, {}
        for name, p in params.items():
            g = grads[name]
            trained = self.alias[name]
            beta1 = torch.sigmoid(self.net.get("logit_beta1", trained))
            beta2 = torch.sigmoid(self.net.get("logit_beta2", trained))
            m_new[name] = beta1 * first[name] + (1 - beta1) * g
            v_new[name] = beta2 * second[name] + (1 - beta2) * g * g
            m_hat = m_new[name] / (1 - beta1 ** (t + 1))
            v_hat = v_new[name] / (1 - beta2 ** (t + 1))
            # sqrt(v_hat + tiny): the same value, but a finite derivative where v_hat = 0 (coordinates whose
            # gradient is always zero, such as blank digit pixels' weights), where sqrt's is inf and 0 * inf
            # would make the meta-gradient nan.
            denominator = (v_hat + torch.finfo(v_hat.dtype).tiny).sqrt() + self.hparams.eps
            new[name] = p - torch.exp(self.net.get("log_lr", trained)) * m_hat / denominator
        return new, (m_new, v_new)

    def describe(self) -> dict[str, Any]:
        net = self.net
        return {"chosen": self._chosen({
            "lr": {n: torch.exp(net.get("log_lr", n)) for n in self.names},
            "beta1": {n: torch.sigmoid(net.get("logit_beta1", n)) for n in self.names},
            "beta2": {n: torch.sigmoid(net.get("logit_beta2", n)) for n in self.names}})}


# --- Baydin et al.'s SGD-HD --------------------------------------------------------------------------


class _HDParameters(nn.Module):
    def __init__(self, lr: float, hyper_lr: float) -> None:
        super().__init__()
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))
        self.log_hyper_lr = nn.Parameter(torch.tensor(math.log(hyper_lr)))


class SGDHD(UnrolledOptimizer):
    """SGD-HD: alpha_t = alpha_{t-1} + beta grad_t . grad_{t-1} (the hypergradient of the loss with respect
    to the previous step's learning rate is -grad_t . grad_{t-1}), theta_t = theta_{t-1} - alpha_t grad_t;
    one alpha per problem over all its tensors, as in Baydin et al.'s algorithm."""

    def build(self, probe: Params) -> nn.Module:
        return _HDParameters(self.hparams.lr_init, self.hparams.hyper_lr_init)

    def init_state(self, params: Stacked) -> tuple[Tensor, Stacked]:
        first = next(iter(params.values()))
        return first.new_zeros(first.shape[0]), {name: torch.zeros_like(p) for name, p in params.items()}

    def update(self, params: Stacked, grads: Stacked, state: tuple[Tensor, Stacked], t: int
               ) -> tuple[Stacked, tuple[Tensor, Stacked]]:
        # The state is the running sum S_t of grad_t . grad_{t-1}, so alpha_t = alpha_0 + beta S_t: the same
        # recursion, but at a truncation boundary only S is cut from the graph, not alpha_0 and beta.
        agreement, previous = state
        agreement = agreement + sum((grads[n] * previous[n]).reshape(agreement.shape[0], -1).sum(dim=1)
                                    for n in params)
        alpha = torch.exp(self.net.log_lr) + torch.exp(self.net.log_hyper_lr) * agreement
        new = {name: p - _broadcast(alpha, p) * grads[name] for name, p in params.items()}
        return new, (agreement, dict(grads))

    def describe(self) -> dict[str, Any]:
        with torch.no_grad():
            return {"chosen": {"lr0": round(float(torch.exp(self.net.log_lr)), 6),
                               "hyper_lr": float(f"{float(torch.exp(self.net.log_hyper_lr)):.6g}")}}


# --- learn2learn's LearnableOptimizer -----------------------------------------------------------------


class _CoordinateMLP(nn.Module):
    """update direction = g + mlp(g) per coordinate; the last layer starts at zero, so the untrained
    transform is the identity and the untrained optimiser is SGD at the LearnableOptimizer's lr."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, grad: Tensor) -> Tensor:
        return grad + self.mlp(grad)


class _Holder(nn.Module):
    """One problem's parameters as an nn.Module, what learn2learn's LearnableOptimizer updates."""

    def __init__(self, params: Params) -> None:
        super().__init__()
        self.names = list(params)
        for name, value in params.items():
            self.register_parameter(_key(name), nn.Parameter(value.detach().clone()))

    def params(self) -> Params:
        return {name: self._parameters[_key(name)] for name in self.names}


class L2LOptimizer(UnrolledOptimizer):
    """learn2learn's LearnableOptimizer with a learned transform, meta-trained online: after every
    optimisation step the objectives at the new parameters are back-propagated (the transform's gradient
    through the last update only, since learn2learn detaches the parameters at every step) and Adam steps
    the transform. One `meta_train_step` is one trajectory of `suite.horizon("train")` steps, that many
    meta-updates."""

    def build(self, probe: Params) -> nn.Module:
        from metaharness_plugins._learn2learn import import_learn2learn

        self.l2l = import_learn2learn()
        self.shapes = {name: tuple(p.shape) for name, p in probe.items()}
        kind = self.hparams.transform
        if kind == "coordinatewise":
            self.shared = _CoordinateMLP(self.hparams.hidden)
            return self.shared
        make = (self.l2l.optim.KroneckerTransform(self.l2l.nn.KroneckerLinear) if kind == "kronecker"
                else self.l2l.optim.MetaCurvatureTransform)
        transforms = []
        for name, p in probe.items():
            try:
                transforms.append(make(p))
            except NotImplementedError as exc:
                raise ValueError(f"l2l-optimizer: learn2learn's {kind} transform does not support parameter "
                                 f"{name!r} of shape {tuple(p.shape)} ({exc}); use "
                                 "transform='coordinatewise'") from exc
        return nn.ModuleList(transforms)

    def transform_for(self, names: list[str], shapes: list[tuple[int, ...]]) -> Any:
        """The `transform` argument of LearnableOptimizer: called once per parameter in order, it hands
        out the meta-learned modules (shared, never new ones), refusing a shape it was not built for."""
        if self.hparams.transform == "coordinatewise":
            return lambda param: self.l2l.optim.transforms.ReshapedTransform(self.shared, (-1, 1))
        for name, shape in zip(names, shapes):
            if self.shapes.get(name) != shape:
                raise ValueError(f"l2l-optimizer's {self.hparams.transform} transforms were built for "
                                 f"{self.shapes} and cannot optimise {name!r} of shape {shape}: learn2learn "
                                 "builds such transforms per tensor from its shape; use "
                                 "transform='coordinatewise'")
        modules = iter([self.net[self.names.index(name)] for name in names])
        return lambda param: next(modules)

    def optimizer_for(self, params: Params) -> tuple[_Holder, Any]:
        """A holder module for one problem's parameters and a LearnableOptimizer sharing our transforms."""
        holder = _Holder(params)
        names = list(params)
        transform = self.transform_for(names, [tuple(p.shape) for p in params.values()])
        return holder, self.l2l.optim.LearnableOptimizer(holder, transform, lr=self.hparams.lr)

    def meta_train_step(self, batch: TaskBatch) -> float:
        """T steps on the batch's problems; after each, one Adam step on the transform's gradient of the
        mean objective; returns the mean objective over steps 1..T."""
        x, y = batch.support_x, batch.support_y
        horizon, n = int(self.suite.horizon("train")), x.shape[0]
        pairs = [self.optimizer_for({k: v.to(self.device) for k, v in
                                     self.suite.initial_parameters(x[b]).items()}) for b in range(n)]
        total = 0.0
        for t in range(horizon + 1):
            self.optimizer.zero_grad(set_to_none=True)
            for _, opt in pairs:
                opt.zero_grad()
            value = sum(self.suite.objective(holder.params(), x[b], y[b])
                        for b, (holder, _) in enumerate(pairs))
            # The sum gives each problem its own gradient; the transform's is then averaged over problems.
            value.backward()
            if t > 0:
                total += float(value.detach()) / n
                for p in self.net.parameters():
                    if p.grad is not None:
                        p.grad.div_(n)
                self.optimizer.step()
            if t < horizon:
                for _, opt in pairs:
                    opt.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / horizon

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """theta_0..theta_steps of the LearnableOptimizer on one problem; the transform is left unchanged."""
        holder, opt = self.optimizer_for({k: v.to(self.device)
                                          for k, v in self.suite.initial_parameters(support_x).items()})
        states = [snapshot(holder.params())]
        with torch.enable_grad():
            for _ in range(steps):
                params = holder.params()
                value = self.suite.objective(params, support_x, support_y)
                # Only the optimizee's gradient: a backward here would also accumulate the transform's.
                for p, g in zip(params.values(), torch.autograd.grad(value, list(params.values()))):
                    p.grad = g
                opt.step()
                states.append(snapshot(holder.params()))
        return states
