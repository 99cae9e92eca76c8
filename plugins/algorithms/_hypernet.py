"""The hypernetwork meta-learner itself (the `hypernet` plugin registers it; imported when a cell builds it).
Papers and the method are in hypernet.py's docstring."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

from harness import TaskBatch, split_classifier
from harness.functional import GradientAlgorithm, Params, detached, gradients, inner_loop, snapshot
from metaharness_plugins import backbones

#: Forward-mode directions evaluated at once (one vmapped jvp each): bounds the tangents held in memory.
FORWARD_CHUNK = 256
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class ConvFeatures(nn.Module):
    """A small conv net for image inputs [K, C, H, W] -> [K, filters]: 3 x [3x3 conv, ReLU, 2x2 max-pool]
    (a pool only while the side allows), then a global average."""

    def __init__(self, channels: int, filters: int, side: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [nn.Conv2d(channels if i == 0 else filters, filters, 3, padding=1), nn.ReLU()]
            if side >= 2:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class DeepSets(nn.Module):
    """rho(mean_i phi(p_i)) (Zaheer et al. 2017, theorem 2; the mean, not the sum, so K at test may differ
    from K at meta-train without moving the pooled value's scale). With `groups` ([G, K], 1 where element i
    belongs to group g) one embedding per group, each the same map of its own members: [G, latent]."""

    def __init__(self, inputs: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(backbones.mlp(inputs, [hidden, hidden]), nn.ReLU())
        self.rho = backbones.mlp(hidden, [hidden, latent])

    def forward(self, pairs: Tensor, groups: Tensor | None = None) -> Tensor:
        h = self.phi(pairs)
        if groups is None:
            return self.rho(h.mean(dim=-2))
        return self.rho(groups @ h / groups.sum(dim=-1, keepdim=True).clamp_min(1.0))


class MAB(nn.Module):
    """The multihead attention block of Lee et al. 2019 (equation 6, without layer norm as in their
    released code's default): H = X + Multihead(X, Y, Y); MAB(X, Y) = H + ReLU(rFF(H))."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.ff = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x: Tensor, y: Tensor, allowed: Tensor | None = None) -> Tensor:
        """`allowed` ([len x, len y], bool): which elements of y each element of x may attend to."""
        def split(t: Tensor) -> Tensor:  # [..., n, hidden] -> [..., heads, n, hidden / heads]
            return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

        q, k, v = split(self.q(x)), split(self.k(y)), split(self.v(y))
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if allowed is not None:
            logits = torch.where(allowed, logits, torch.finfo(logits.dtype).min)
        weights = torch.softmax(logits, dim=-1)
        h = x + (weights @ v).transpose(-3, -2).flatten(-2)
        return h + torch.relu(self.ff(h))


class SetTransformer(nn.Module):
    """Two self-attention blocks SAB(X) = MAB(X, X) (permutation-equivariant), pooling by multihead
    attention with one learned seed, PMA(Z) = MAB(S, rFF(Z)) (invariant), then a linear map to the latent.
    With `groups` ([G, K]) attention stays within each group and the seed pools each group: [G, latent]."""

    def __init__(self, inputs: int, hidden: int, latent: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(inputs, hidden)
        self.sab1, self.sab2, self.pma = MAB(hidden, heads), MAB(hidden, heads), MAB(hidden, heads)
        self.pool_ff = nn.Linear(hidden, hidden)
        self.seed = nn.Parameter(torch.randn(1, hidden) / math.sqrt(hidden))
        self.out = nn.Linear(hidden, latent)

    def forward(self, pairs: Tensor, groups: Tensor | None = None) -> Tensor:
        together = None if groups is None else (groups.T @ groups) > 0  # [K, K]: in one group
        h = self.embed(pairs)
        h = self.sab1(h, h, together)
        h = self.sab2(h, h, together)
        if groups is None:
            return self.out(self.pma(self.seed, torch.relu(self.pool_ff(h)))[0])
        seeds = self.seed.expand(groups.shape[0], -1)  # one query per group, attending to its members
        return self.out(self.pma(seeds, torch.relu(self.pool_ff(h)), groups > 0))


def film_layers(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, units) of the layers FiLM modulates: each Linear or conv but the output layer, with a
    batch norm that directly follows one taking its place (a scale of the conv's output would be normalised
    away), in the model's registration order (its execution order, for nn.Sequential models)."""
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    leaves = [(name, m) for name, m in leaves if isinstance(m, AFFINE + NORMS)]
    chosen = []
    for i, (name, module) in enumerate(leaves[:-1]):  # the last affine layer is the output
        if isinstance(module, AFFINE) and isinstance(leaves[i + 1][1], NORMS):
            continue
        if isinstance(module, NORMS) and not module.affine:
            raise TypeError(f"hypernet generate='film' modulates batch norm {name!r}, which has no affine "
                            f"parameters; build it with affine=True or use generate='all' or 'head'")
        if getattr(module, "bias", None) is None:
            raise TypeError(f"hypernet generate='film' shifts the output of layer {name!r}, which has no "
                            f"bias; use generate='all' or 'head'")
        chosen.append((name, int(module.weight.shape[0])))
    if not chosen:
        raise TypeError("hypernet generate='film' modulates hidden layers, and the suite's model has none; "
                        "use generate='all' or 'head'")
    return chosen


class HyperNetwork(nn.Module):
    """support set -> the base learner's parameter dict (every name of `model.named_parameters()`).

    A classifier's head (`generate="head"` on integer labels) is generated class by class, as Qiao et al.
    2018 predict it from activations: row c of the last Linear layer (and its bias) is the decoder's output
    for the set encoder's embedding of class c's support examples, embedded by the body itself. The head is
    then equivariant to relabelling the classes, which a single embedding of the whole set would have to
    learn (measured: it stayed at chance on glyphs where this learns). Otherwise one embedding of all the
    (x, y) pairs, y one-hot for a classifier, generates everything.
    """

    def __init__(self, model: nn.Module, hp: Any, example: TaskBatch) -> None:
        super().__init__()
        sx, sy = example.support_x[0], example.support_y[0]
        self.generate = hp.generate
        self.classification = not sy.is_floating_point()
        self.classwise = self.classification and hp.generate == "head"
        with torch.no_grad():  # classes (logits) of a classifier, for the one-hot code of its labels
            self.outputs = int(model(sx).shape[-1]) if sx.dim() in (2, 4) else 0
        if self.classwise:
            trunk, head = split_classifier(model, "hypernet generate='head' (classification)")
            # The trunk shares the model's modules, so its parameters are the body's; it is kept out of this
            # module's registry so that they are not listed twice.
            object.__setattr__(self, "trunk", trunk)
            width = head.in_features
        elif sx.dim() == 4:  # images [K, C, H, W]
            self.features: nn.Module = ConvFeatures(sx.shape[1], hp.conv_filters, min(sx.shape[2:]))
            width = hp.conv_filters
        elif sx.dim() == 2:  # vectors [K, d]
            self.features, width = nn.Flatten(), sx.shape[1]
        else:
            raise ValueError(f"hypernet encodes vector inputs [K, d] or images [K, C, H, W]; this suite's "
                             f"support_x is shaped {tuple(sx.shape)} per task")
        if not self.classwise:
            width += self.outputs if self.classification else sy.reshape(sy.shape[0], -1).shape[1]
        self.encoder = (DeepSets(width, hp.hidden, hp.latent) if hp.encoder == "deepsets"
                        else SetTransformer(width, hp.hidden, hp.latent, hp.heads))
        base = dict(model.named_parameters())
        # In "head" and "film" mode the model's own parameters are meta-learned (the body); in "all" they
        # only initialise the decoder's bias.
        self.body = model if hp.generate != "all" else None
        if hp.generate == "film":
            self.film = film_layers(model)
            self.shapes = [(f"{name}.film", (2 * units,)) for name, units in self.film]
            bias = torch.zeros(sum(2 * units for _, units in self.film))
        elif self.classwise:  # one row per class: every class starts equal (logits 0, the loss log C)
            names = self.head_names(model)
            self.shapes = [(name, tuple(base[name].shape)) for name in names]
            bias = torch.zeros(sum(math.prod(s[1:]) for _, s in self.shapes))
        else:
            names = list(base) if hp.generate == "all" else self.head_names(model)
            self.shapes = [(name, tuple(base[name].shape)) for name in names]
            bias = torch.cat([base[name].detach().reshape(-1) for name in names])
        self.decoder = nn.Linear(hp.latent, bias.numel())
        with torch.no_grad():  # z starts with no influence: the base learner starts as the suite's model
            self.decoder.weight.zero_()
            self.decoder.bias.copy_(bias)
        self.to(dtype=next(iter(base.values())).dtype)

    @staticmethod
    def head_names(model: nn.Module) -> list[str]:
        """The parameter names of the model's last Linear layer (a TypeError if it has none)."""
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linear:
            raise TypeError(f"hypernet generate='head' generates the last nn.Linear layer, and the suite's "
                            f"model ({type(model).__name__}) has none; use generate='all'")
        head = dict(model.named_modules())[linear[-1]]
        return [f"{linear[-1]}.{n}" for n, _ in head.named_parameters()]

    @property
    def unused(self) -> set[str]:
        """Names of this module's parameters the generated dict never uses (the generated head's own)."""
        return {f"body.{name}" for name, _ in self.shapes} if self.generate == "head" else set()

    def num_generated(self) -> int:
        """How many numbers the decoder generates per task."""
        return sum(math.prod(shape) for _, shape in self.shapes)

    def embed(self, sx: Tensor, sy: Tensor) -> Tensor:
        """The task embedding z [latent] of one support set ([classes, latent] for a class-wise head)."""
        if self.classwise:
            groups = (sy[None, :] == torch.arange(self.outputs, device=sy.device)[:, None]).to(sx.dtype)
            return self.encoder(self.trunk(sx), groups)
        if self.classification:
            code = (sy[..., None] == torch.arange(self.outputs, device=sy.device)).to(sx.dtype)
        else:
            code = sy.reshape(sy.shape[0], -1).to(sx.dtype)
        return self.encoder(torch.cat([self.features(sx), code], dim=-1))

    def forward(self, sx: Tensor, sy: Tensor) -> Params:
        out = self.decoder(self.embed(sx, sy))
        if self.classwise:  # [classes, in_features (+ 1 for the bias)]: the head row by row
            pieces = out.split([math.prod(s[1:]) for _, s in self.shapes], dim=-1)
        else:
            pieces = out.split([math.prod(s) for _, s in self.shapes])
        generated = {name: piece.reshape(shape) for (name, shape), piece in zip(self.shapes, pieces)}
        if self.body is None:
            return generated
        params = dict(self.body.named_parameters())
        if self.generate == "head":
            return {**params, **generated}
        for name, _ in self.film:
            gamma, beta = generated[f"{name}.film"].chunk(2)
            weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            scale = 1.0 + gamma
            params[f"{name}.weight"] = scale.reshape(-1, *(1,) * (weight.dim() - 1)) * weight
            params[f"{name}.bias"] = scale * bias + beta
        return params


def per_task(fn: Callable[..., Any], *args: Any, vmap: bool) -> Any:
    """`fn` on every task of the pytrees `args` (leading task dimension), results stacked: vmapped or
    looped."""
    if vmap:
        return torch.func.vmap(fn)(*args)
    n = tree_leaves(args)[0].shape[0]
    results = [fn(*tree_map(lambda t: t[i], args)) for i in range(n)]
    return tree_map(lambda *leaves: torch.stack(leaves), *results)


def load_forward_mode() -> None:
    """Import the forward-mode decompositions now, silencing the FutureWarning of `torch.jit.script` that
    torch's own module raises on first use (PyTorch 2.9+), which says nothing about this code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


class HyperNet(GradientAlgorithm):
    """The hypernetwork meta-learner: `net` (a `HyperNetwork`) generates the suite model's parameters from a
    support set; its parameters (and, in "head" / "film" mode, the body's) are the meta-parameters."""

    def __init__(self, hparams: Any, model: nn.Module, suite: Any, backend: Any) -> None:
        super().__init__(hparams, model, suite, backend)
        # One episode shows the shapes the encoder is built for (its own generator: no global state moves).
        example = suite.sample(1, torch.Generator().manual_seed(0), "train").to(self.device)
        dtype = next(self.model.parameters()).dtype
        if example.support_x.is_floating_point():
            example = dataclasses.replace(example, support_x=example.support_x.to(dtype))
        self.net = HyperNetwork(self.model, hparams, example).to(self.device)
        if hparams.hypergradient == "forward":
            load_forward_mode()

    def meta_parameters(self) -> Params:
        unused = self.net.unused
        return {name: p for name, p in self.net.named_parameters() if name not in unused}

    @property
    def test_steps(self) -> int:  # type: ignore[override]
        """SGD steps at meta-test: `hparams.test_steps`, or `inner_steps` when that is None."""
        hp = self.hparams
        return int(hp.inner_steps if hp.test_steps is None else hp.test_steps)

    @property
    def vmap_tasks(self) -> bool:  # type: ignore[override]
        """vmap over tasks unless checkpointing (torch.func.vmap cannot run torch.utils.checkpoint)."""
        return bool(self.hparams.vmap_tasks) and not self.hparams.checkpoint

    def generated_loss(self, params: Params, qx: Tensor, qy: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
        """The query loss of the base learner with the generated `params`, after `inner_steps` SGD steps on
        the support set (differentiated through). With `checkpoint` the query forward runs under
        torch.utils.checkpoint; the inner steps do not: each takes a gradient inside the forward pass, which
        would unpack (and so recompute) a checkpointed region's activations at once."""
        hp = self.hparams
        if hp.inner_steps:
            params = inner_loop(self.loss, params, sx, sy, hp.inner_steps, hp.inner_lr)[-1]
        if hp.checkpoint:
            return torch.utils.checkpoint.checkpoint(self.loss, params, qx, qy, use_reentrant=False)
        return self.loss(params, qx, qy)

    def task_loss(self, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        """One task's query loss with the parameters generated from its support set (reverse mode)."""
        return self.generated_loss(self.net(sx, sy), qx, qy, sx, sy)

    def forward_gradient(self, params: Params, qx: Tensor, qy: Tensor, sx: Tensor, sy: Tensor
                         ) -> tuple[Tensor, Params]:
        """(query loss, d loss / d params) of one task by forward mode: the directional derivative along each
        base-learner parameter's basis vector, one jvp per direction, `FORWARD_CHUNK` directions at a time."""
        names = list(params)
        sizes = [params[n].numel() for n in names]
        flat = torch.cat([params[n].reshape(-1) for n in names])

        def loss_of(vector: Tensor) -> Tensor:
            pieces = vector.split(sizes)
            return self.generated_loss({n: p.reshape(params[n].shape) for n, p in zip(names, pieces)},
                                       qx, qy, sx, sy)

        def directional(index: Tensor) -> Tensor:
            basis = (torch.arange(flat.numel(), device=flat.device) == index).to(flat.dtype)
            return torch.func.jvp(loss_of, (flat,), (basis,))[1]

        indices = torch.arange(flat.numel(), device=flat.device)
        grad = torch.func.vmap(directional, chunk_size=FORWARD_CHUNK)(indices)
        pieces = grad.split(sizes)
        return loss_of(flat), {n: p.reshape(params[n].shape) for n, p in zip(names, pieces)}

    def meta_gradient(self, batch: TaskBatch) -> tuple[float, Params]:
        """(meta-loss, meta-gradient). Reverse mode: autograd of the mean task loss. Forward mode: the
        generated parameters' gradients g_t by `forward_gradient`, then the hypernetwork's vector-Jacobian
        product, the gradient of mean_t <phi_t(theta), g_t> with g_t held constant: the same chain rule."""
        if self.hparams.hypergradient == "reverse":
            return super().meta_gradient(batch)
        sx, sy, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
        generated = per_task(self.net, sx, sy, vmap=self.vmap_tasks)
        losses, grads = per_task(self.forward_gradient, detached(generated), qx, qy, sx, sy,
                                 vmap=self.vmap_tasks)
        surrogate = sum((generated[n] * grads[n]).sum() for n in generated) / batch.num_tasks
        return float(losses.mean()), gradients(surrogate, self.meta_parameters())

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> list[Params]:
        """The parameters generated from this support set, then `steps` SGD steps on its support loss
        (step size `inner_lr`): steps + 1 detached dicts."""
        with torch.no_grad():
            generated = snapshot(self.net(support_x, support_y))
        return inner_loop(self.loss, generated, support_x, support_y, steps, self.hparams.inner_lr,
                          first_order=True)

    def describe(self) -> dict[str, Any]:
        hp = self.hparams
        return {"generated_parameters": self.net.num_generated(), "generate": hp.generate,
                "encoder": hp.encoder, "hypergradient": hp.hypergradient, "checkpoint": hp.checkpoint,
                "tasks": "vmapped" if self.vmap_tasks else "looped"}
