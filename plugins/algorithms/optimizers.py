"""Hand-designed optimisers with tuned learning rates: the baselines of Andrychowicz, Denil, Gomez,
Hoffman, Pfau, Schaul, Shillingford & de Freitas (2016), "Learning to learn by gradient descent by
gradient descent", NeurIPS, section 3 (SGD, RMSprop, ADAM and Nesterov's accelerated gradient, "each
with a tuned learning rate"), for optimisation suites such as `metaopt`.

- `sgd`: plain gradient descent (Robbins & Monro 1951, "A Stochastic Approximation Method").
- `momentum`: heavy-ball momentum 0.9 (Polyak 1964, "Some methods of speeding up the convergence of
  iteration methods"); `nesterov = true` gives Nesterov's accelerated gradient in the form of Sutskever,
  Martens, Dahl & Hinton (2013), "On the importance of initialization and momentum in deep learning", ICML.
- `rmsprop`: Tieleman & Hinton (2012), COURSERA "Neural Networks for Machine Learning", lecture 6.5.
- `adam`: Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization", ICLR.

Each runs torch.optim's own implementation (`torch.optim.SGD`, `RMSprop`, `Adam`); nothing is re-derived.
The only thing meta-learned is the learning rate, and only when `lr` is unset: every meta-training
iteration runs each learning rate of a log grid (`lr_min` .. `lr_max`, `lr_points` values: 13 half-decades
from 1e-4 to 1e2 by default) over the suite's training horizon T on the iteration's problems, and adds
each rate's score (`criterion`: the mean over steps 0..T of log10 loss, i.e. the area under the log-loss
curve, or the final log10 loss; a run whose loss became non-finite scores +inf for good). The chosen rate
is the grid rate of lowest mean score so far; it is the algorithm's one meta-parameter, so the harness's
best-validated checkpoint keeps it. The choice itself uses meta-training problems only; validation only
picks which checkpoint (hence which of the rates chosen so far) is tested.

The suite provides the problems through a duck-typed interface (`initial_parameters(support_x)`,
`objective(params, x, y)`, `horizon(split)`, `predict(params, x)`); a state is a dict of parameter tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl

CRITERIA = ("mean_log_loss", "final_log_loss")


@dataclass(frozen=True)
class OptimizerHparams:
    """lr: a fixed learning rate, or None to tune it on meta-training problems over the log grid
        lr_min .. lr_max with lr_points values (13: half-decades from 1e-4 to 1e2).
    criterion: what tuning minimises per run: "mean_log_loss" (mean over steps 0..T of log10 loss) or
        "final_log_loss" (log10 loss after T steps); averaged over every meta-training problem seen.
    meta_batch_size: meta-training problems per iteration (each run at every grid rate).
    """

    lr: float | None = None
    lr_min: float = 1e-4
    lr_max: float = 1e2
    lr_points: int = 13
    criterion: str = "mean_log_loss"
    meta_batch_size: int = 10

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("lr_points", "meta_batch_size"), positive=("lr_min", "lr_max"))
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be None (tune it) or a learning rate > 0, got {self.lr!r}")
        if self.lr_max < self.lr_min:
            raise ValueError(f"lr_max must be >= lr_min ({self.lr_min!r}), got {self.lr_max!r}")
        if self.lr_points == 1 and self.lr_max != self.lr_min:
            raise ValueError(f"lr_points must be >= 2 to span lr_min = {self.lr_min!r} .. lr_max = "
                             f"{self.lr_max!r} (or set lr_max = lr_min), got 1")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")

    def lr_grid(self) -> tuple[float, ...]:
        """The candidate learning rates: `lr_points` values log-spaced from lr_min to lr_max."""
        if self.lr_points == 1:
            return (float(self.lr_min),)
        lo, hi = math.log10(self.lr_min), math.log10(self.lr_max)
        return tuple(10.0 ** (lo + (hi - lo) * k / (self.lr_points - 1)) for k in range(self.lr_points))


@dataclass(frozen=True)
class SGDHparams(OptimizerHparams):
    """Plain SGD: nothing but the learning rate."""


@dataclass(frozen=True)
class MomentumHparams(OptimizerHparams):
    """momentum: 0.9 (the usual choice; Sutskever et al. 2013 use up to 0.999).
    nesterov: Nesterov's accelerated gradient (NAG, one of Andrychowicz et al.'s baselines)."""

    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.momentum < 1:
            raise ValueError(f"momentum must be in (0, 1), got {self.momentum!r}")


@dataclass(frozen=True)
class RMSpropHparams(OptimizerHparams):
    """alpha: decay of the squared-gradient average (0.99, torch.optim.RMSprop's default; Tieleman &
    Hinton's lecture uses 0.9). eps: added to the root mean square (torch's default 1e-8)."""

    alpha: float = 0.99
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("eps",))
        if not 0 <= self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha!r}")


@dataclass(frozen=True)
class AdamHparams(OptimizerHparams):
    """beta1, beta2, eps: Kingma & Ba's defaults (0.9, 0.999, 1e-8), also torch.optim.Adam's."""

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("eps",))
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")


PAPER = ("Andrychowicz et al. 2016, Learning to learn by gradient descent by gradient descent (NeurIPS), "
         "section 3")
OPTIMIZERS = (
    ("sgd", "SGD", SGDHparams, "gradient descent (torch.optim.SGD), learning rate tuned on training problems",
     "Robbins & Monro 1951"),
    ("momentum", "Momentum", MomentumHparams,
     "SGD with momentum 0.9, Nesterov optional (torch.optim.SGD), learning rate tuned on training problems",
     "Polyak 1964; Sutskever et al. 2013"),
    ("rmsprop", "RMSprop", RMSpropHparams,
     "RMSprop (torch.optim.RMSprop), learning rate tuned on training problems", "Tieleman & Hinton 2012"),
    ("adam", "Adam", AdamHparams, "Adam (torch.optim.Adam), learning rate tuned on training problems",
     "Kingma & Ba 2015"),
)


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name=name,
            factory=f"metaharness_plugins.algorithms._optimizers:{cls}",
            hparams=hparams,
            task_kinds=frozenset({"optimisation"}),
            description=f"baseline: {description}",
            paper=f"{source}; tuned as the baselines of {PAPER}",
            second_order=False,
        )
        for name, cls, hparams, description, source in OPTIMIZERS
    ]


# The implementation lives in _optimizers.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._optimizers")
