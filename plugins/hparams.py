"""Hyper-parameters of the gradient-based and metric-based meta-learners (and the spec pair every MAML
implementation registers), shared by the native
implementations and by every peer library's (learn2learn, torchmeta, higher, TorchOpt): one dataclass per
method, so each name has one meaning and one default wherever it appears, and one grid sweeps every
implementation of a method alike. A helper module the algorithm plugins import, not a plugin.

The native implementations subclass these to add `vmap_tasks`, a switch of their own task loop that the
peers' module-cloning loops have no counterpart for.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.specs import AlgorithmSpec, check_ranges

DISTANCES = ("euclidean", "cosine")


@dataclass(frozen=True)
class MAMLHparams:
    """Defaults are the MAML paper's sinusoid settings (Finn et al. 2017, section 5.1).

    inner_lr: the inner step size alpha, fixed at 0.01 for sinusoids.
    inner_steps: inner SGD steps at meta-train: one gradient update with K = 10 points.
    test_steps: inner SGD steps at meta-test (figure 2 and the table report up to 10 steps).
    meta_lr: Adam's step size beta for the meta-update (Adam is the meta-optimiser; 0.001 in the
        paper's sinusoid set-up and its released code).
    meta_batch_size: tasks per meta-update, 25 for sinusoids.
    first_order: drop the second-order terms (the first-order approximation of section 5.2).
    """

    inner_lr: float = 0.01
    inner_steps: int = 1
    test_steps: int = 10
    meta_lr: float = 0.001
    meta_batch_size: int = 25
    first_order: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("inner_steps", "meta_batch_size"), non_negative=("test_steps",),
                     positive=("inner_lr", "meta_lr"))


@dataclass(frozen=True)
class FOMAMLHparams(MAMLHparams):
    """First-order MAML: the same settings as MAML with the second-order terms dropped."""

    first_order: bool = True


@dataclass(frozen=True)
class MetaSGDHparams:
    """Defaults follow the Meta-SGD paper's regression experiment (Li et al. 2017, section 4.1), which
    reuses MAML's set-up.

    inner_steps / test_steps: adaptation steps at meta-train / meta-test ("in just one step").
    alpha_init: alpha's entries start uniform in this range, the paper's setting for regression
        (section 4.1), drawn from torch's global RNG after the model is built, in parameter order;
        theta keeps the model's own initialisation.
    meta_lr: Adam's step size for (theta, alpha), 0.001 as in MAML.
    meta_batch_size: tasks per meta-update; 25 as in MAML's sinusoid protocol, so the two see the
        same tasks per iteration in a harness grid.
    """

    inner_steps: int = 1
    test_steps: int = 1
    alpha_init: tuple[float, float] = (0.005, 0.1)
    meta_lr: float = 0.001
    meta_batch_size: int = 25

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("inner_steps", "meta_batch_size"), non_negative=("test_steps",),
                     positive=("meta_lr",))
        if len(self.alpha_init) != 2:
            raise ValueError(f"alpha_init must be a range (low, high), got {self.alpha_init!r}")
        low, high = self.alpha_init
        if not 0 <= low <= high:
            raise ValueError(
                f"alpha_init must be a range (low, high) with 0 <= low <= high, got {self.alpha_init!r}"
            )


@dataclass(frozen=True)
class ANILHparams:
    """Defaults are MAML's Omniglot 5-way settings, which the ANIL paper keeps (Raghu et al. 2019,
    section 4 and appendix; MAML appendix A.1 / section 5.2).

    inner_lr: the inner step size alpha of the head's SGD steps, 0.4 on Omniglot.
    inner_steps: inner SGD steps on the head at meta-train (one on Omniglot).
    test_steps: inner SGD steps at meta-test (three on Omniglot, with the same step size).
    meta_lr: Adam's step size for the meta-update of body and head (0.001).
    meta_batch_size: tasks per meta-update (32 for 5-way Omniglot; 16 for 20-way).
    first_order: treat the head's inner gradients as constants (no second-order terms).
    """

    inner_lr: float = 0.4
    inner_steps: int = 1
    test_steps: int = 3
    meta_lr: float = 0.001
    meta_batch_size: int = 32
    first_order: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("inner_steps", "meta_batch_size"), non_negative=("test_steps",),
                     positive=("inner_lr", "meta_lr"))


@dataclass(frozen=True)
class ProtoNetHparams:
    """Defaults are the ProtoNets paper's Omniglot settings (Snell et al. 2017, section 3.1).

    meta_lr: Adam's step size, 1e-3 in the paper (which also halves it every 2000 episodes; the
        harness's budgets are far shorter, so no schedule is applied).
    meta_batch_size: episodes per Adam step; the paper trains on one episode at a time.
    distance: "euclidean" (squared Euclidean, the paper's choice, section 2.3) or "cosine" (the logits
        are cosine similarities; the paper reports it worse, section 3.1 and appendix).
    """

    meta_lr: float = 0.001
    meta_batch_size: int = 1
    distance: str = "euclidean"

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("meta_batch_size",), positive=("meta_lr",))
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {self.distance!r}")


MAML_PAPER = "Finn, Abbeel & Levine 2017, Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks (ICML)"


def maml_specs(
    prefix: str,
    factory: str,
    second: str,
    first: str,
    *,
    paper: str = "",
    requires: tuple[str, ...] = (),
    install_hint: str = "",
    hparams: tuple[type, type] = (MAMLHparams, FOMAMLHparams),
) -> list[AlgorithmSpec]:
    """The `<prefix>maml` and `<prefix>fomaml` specs of one MAML implementation: one factory (the flag
    `first_order` tells them apart), the shared hyper-parameters, regression and classification.
    `second` and `first` describe the two; `paper` names the implementation's own paper, if any."""
    papers = f"{paper}; {MAML_PAPER}" if paper else MAML_PAPER
    common = {"factory": factory, "task_kinds": frozenset({"regression", "classification"}),
              "requires": requires, "install_hint": install_hint}
    return [
        AlgorithmSpec(name=f"{prefix}maml", hparams=hparams[0], description=second, paper=papers,
                      second_order=True, **common),
        AlgorithmSpec(name=f"{prefix}fomaml", hparams=hparams[1], description=first,
                      paper=papers + ", section 5.2", **common),
    ]
