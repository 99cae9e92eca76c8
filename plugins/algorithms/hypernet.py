"""A hypernetwork mapping learner: Ha, Dai & Le (2017), "HyperNetworks", ICLR (arXiv:1609.09106), made
task-conditional as in the "everything is a mapping" view of meta-learning: a network maps a task's support
set directly to the parameters of the base learner, and is trained end to end, by back-propagation through
the base learner's query loss, across tasks.

The map has three parts. Each support pair (x, y) is encoded (x as it is when it is a vector, through a
small conv net when it is an image; y as it is for regression, one-hot for classification); a
permutation-invariant set encoder pools the pairs into one task embedding z (one per class for a
classifier's head, see "head"): Deep Sets (Zaheer et al. 2017,
"Deep Sets", NeurIPS: rho(mean_i phi(x_i, y_i))) or a Set Transformer (Lee et al. 2019, "Set Transformer",
ICML: self-attention blocks, then pooling by multi-head attention with a learned seed); a linear decoder
maps z to parameters of the suite's own model, which is then run on the query set with them
(`torch.func.functional_call`). `generate` says which parameters:

- "all": every parameter of the model, theta(z) = theta_0 + D z (theta_0 starts at the model's own
  initialisation and D at zero, so training starts from the network MAML would start from);
- "head": the last Linear layer only; the rest of the model (the body) is meta-learned as ordinary
  parameters, shared by all tasks. A classifier's head is generated class by class, as Qiao et al. 2018
  ("Few-Shot Image Recognition by Predicting Parameters from Activations", CVPR) predict it: row c (and
  bias c) is the decoder's output for the set encoder's embedding of class c's support examples, embedded
  by the body itself, so the head is equivariant to relabelling the classes;
- "film": a FiLM modulation (Perez et al. 2018, "FiLM", AAAI) of every hidden layer, h -> (1 + gamma(z)) * h
  + beta(z) per unit or channel, applied to the last affine layer before each non-linearity (the batch
  norm where one follows a convolution, as TADAM, Oreshkin et al. 2018, and CNAPs, Requeima et al. 2019,
  do); the weights themselves are ordinary meta-parameters.

The hypergradient is reverse mode by default. With `hypergradient = "forward"` the derivative of the base
learner's query loss with respect to its parameters (the generated ones and, in "head" / "film" mode, the
body's) is computed in forward mode: one `torch.func.jvp` per parameter, vmapped in chunks (the columns
`torch.func.jacfwd` would compute); only the hypernetwork's own Jacobian is then applied in reverse mode (a
vector-Jacobian product). The two give the same meta-gradient (a test checks it); forward mode keeps no
activations of the base learner for a backward pass, but costs one forward pass per base-learner
parameter (measured on sinusoid, 1,761 parameters, meta-batch 25: 1.7-2.1 s per iteration against 7-19 ms).
With `checkpoint = true` the generated network's forward on the query set runs under
`torch.utils.checkpoint` (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): its
activations are recomputed in the backward pass instead of stored, one task at a time (tasks are then
looped, not vmapped), so memory no longer grows with meta-batch x query set. Inner steps (`inner_steps`)
are not checkpointed: each takes a gradient during the forward pass, which would unpack, and so recompute,
a checkpointed region's activations at once (measured: slower and larger than no checkpoint at all).

At test time the state is the generated parameters, fine-tuned from there by `test_steps` steps of SGD on
the support loss (step size `inner_lr`; none by default); `inner_steps` > 0 takes such steps, differentiated
through (second order), at meta-train as well, and the test then takes as many unless `test_steps` says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness import RESULT_NEUTRAL, AlgorithmSpec, check_ranges, forward_attributes, hookimpl

ENCODERS = ("deepsets", "attention")
GENERATES = ("all", "head", "film")
HYPERGRADIENTS = ("reverse", "forward")
MAX_WIDTH = 100_000  # units of one encoder layer: far past any use here, short of exhausting memory


@dataclass(frozen=True)
class HyperNetHparams:
    """encoder: the set encoder, "deepsets" (mean-pooled MLP) or "attention" (Set Transformer).
    generate: which base-learner parameters are generated: "all", "head" (the last Linear) or "film".
    hidden: width of the set encoder's layers (and of the attention blocks).
    latent: size of the task embedding z the decoder maps to parameters.
    heads: attention heads of the Set Transformer (`hidden` must be a multiple).
    conv_filters: channels of the small conv net that embeds image inputs (3 conv-ReLU-pool blocks).
    hypergradient: "reverse" (autograd through everything) or "forward" (forward mode through the base
        learner, see the module docstring).
    checkpoint: recompute the generated network's query forward in the backward pass instead of storing it.
    inner_steps: differentiable SGD steps on the support set from the generated parameters at meta-train
        (0: the generated network is scored on the query set as it is).
    test_steps: SGD steps on the support set from the generated parameters at meta-test; None (the
        default) takes as many as `inner_steps`, so the learner is tested as it was trained.
    inner_lr: the step size of those steps.
    meta_lr: Adam's step size for the hypernetwork (and the body in "head" / "film" mode).
    meta_batch_size: tasks per meta-update (25, as MAML's sinusoid protocol).
    vmap_tasks: vectorise the tasks of a meta-batch with vmap rather than loop over them (same numbers;
        ignored, looped, with `checkpoint`, which torch.func.vmap does not support).
    """

    encoder: str = "deepsets"
    generate: str = "all"
    hidden: int = 128
    latent: int = 64
    heads: int = 4
    conv_filters: int = 32
    hypergradient: str = "reverse"
    checkpoint: bool = field(default=False, metadata=RESULT_NEUTRAL)  # the same gradient, recomputed
    inner_steps: int = 0
    test_steps: int | None = None
    inner_lr: float = 0.01
    meta_lr: float = 0.001
    meta_batch_size: int = 25
    vmap_tasks: bool = field(default=True, metadata=RESULT_NEUTRAL)

    def __post_init__(self) -> None:
        choices = (("encoder", ENCODERS), ("generate", GENERATES), ("hypergradient", HYPERGRADIENTS))
        for name, valid in choices:
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        check_ranges(self, at_least_one=("hidden", "latent", "heads", "conv_filters", "meta_batch_size"),
                     non_negative=("inner_steps",), positive=("inner_lr", "meta_lr"))
        if self.test_steps is not None and self.test_steps < 0:
            raise ValueError(f"test_steps must be None (as many as inner_steps) or >= 0, "
                             f"got {self.test_steps!r}")
        for name in ("hidden", "latent", "heads", "conv_filters"):
            if getattr(self, name) > MAX_WIDTH:
                raise ValueError(f"{name} must be at most {MAX_WIDTH:,}, got {getattr(self, name)!r}")
        if self.encoder == "attention" and self.hidden % self.heads:
            raise ValueError(f"hidden must be a multiple of heads for the attention encoder (each head gets "
                             f"hidden / heads dimensions), got hidden={self.hidden}, heads={self.heads}")
        if self.checkpoint and self.hypergradient == "forward":
            raise ValueError("checkpoint=true has nothing to save with hypergradient='forward' (forward mode "
                             "keeps no activations of the generated network for a backward pass); use one")
        if self.inner_steps and self.hypergradient == "forward":
            raise ValueError("hypergradient='forward' needs inner_steps=0: forward mode through inner "
                             "gradient steps is forward-over-reverse differentiation of the suite's loss, "
                             "which PyTorch does not support for F.mse_loss (its backward has no forward "
                             "derivative); use hypergradient='reverse' for inner_steps > 0")


def check(hparams: HyperNetHparams, suite_name: str, suite_config: Any) -> str:
    """"" when the hypernetwork can run on the suite configuration, else why not (FiLM of a model with
    no hidden layer)."""
    if hparams.generate == "film" and getattr(suite_config, "model", None) == "linear":
        where = f"suite {suite_name!r}" if suite_name else "the suite"
        return (f"generate='film' modulates hidden layers, and {where} with model='linear' has none; "
                f"use generate='all' or 'head'")
    return ""


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="hypernet",
            factory="metaharness_plugins.algorithms._hypernet:HyperNet",
            hparams=HyperNetHparams,
            task_kinds=frozenset({"regression", "classification"}),
            description="hypernetwork: a set encoder maps the support set to the base learner's parameters "
                        "(all, head or FiLM), trained end to end through the query loss",
            paper="Ha, Dai & Le 2017, HyperNetworks (ICLR); Zaheer et al. 2017, Deep Sets (NeurIPS); Lee et "
                  "al. 2019, Set Transformer (ICML); Perez et al. 2018, FiLM (AAAI)",
            check=check,
        )
    ]


# The implementation lives in _hypernet.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._hypernet")
