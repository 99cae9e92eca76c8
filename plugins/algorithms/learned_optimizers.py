"""Learned optimisers for the optimisation suites (`metaopt`): an optimiser meta-trained through the
unrolled optimisation of sampled problems.

- `lstm-optimizer`: Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul, Shillingford & de Freitas (2016),
  "Learning to learn by gradient descent by gradient descent", NeurIPS (arXiv:1606.04474): a
  coordinate-wise two-layer LSTM (20 hidden units, shared by every coordinate) maps each coordinate's
  preprocessed gradient to its update; meta-trained by truncated back-propagation through time.
- `metasgd-optimizer`: SGD with a meta-learned step size (and momentum) per parameter tensor, in the
  spirit of Meta-SGD (Li, Zhou, Chen & Li 2017, arXiv:1707.09835) but learned through the whole
  unrolled trajectory, as Andrychowicz et al. learn their optimiser.
- `learned-adam`: Adam (Kingma & Ba 2015, arXiv:1412.6980) whose step size and betas are meta-learned
  per parameter tensor through the unrolled trajectory (a learned-hyper-parameter optimiser).
- `sgd-hd`: SGD with hypergradient descent on its learning rate, Baydin, Cornish, Martinez Rubio,
  Schmidt & Wood (2018), "Online Learning Rate Adaptation with Hypergradient Descent", ICLR
  (arXiv:1703.04782), algorithm SGD-HD; its initial learning rate and hyper learning rate beta are
  meta-learned through the unrolled trajectory.
- `l2l-optimizer`: learn2learn's `LearnableOptimizer` (Arnold et al. 2020, arXiv:2008.12284) around a
  learned gradient transform. learn2learn detaches the optimizee's parameters at every step
  (`param.detach_()` in `LearnableOptimizer.step`), so its meta-gradient is the one-step lookahead of
  meta-descent (Sutton 1992; Baydin et al. 2018; Majumder et al. 2019), not a multi-step unroll:
  the transform is updated online after every optimisation step. Its transforms are built per parameter
  tensor from the tensor's shape (`KroneckerTransform`, `MetaCurvatureTransform`), so they cannot follow
  a problem of another dimension; `transform="coordinatewise"` (the default) is a small MLP shared by
  every coordinate, which does, while "kronecker" and "metacurvature" refuse a shape they were not built
  for with an error saying so.

How a meta-iteration works: every optimiser but `l2l-optimizer` runs, in one `meta_train_step`, the
whole training horizon T = `suite.horizon("train")` on `meta_batch_size` problems at once, in
truncations of `unroll` steps; after each truncation the meta-loss (the mean objective over the
truncation's steps and problems, the paper's equation 3 with w_t = 1, divided by their number) is
back-propagated and Adam takes one step on the optimiser's parameters; the optimizee's state is then
detached (truncated BPTT, section 3 of the paper). So one harness iteration is T / unroll meta-updates.
The optimizee's gradient is detached by default ("we do not propagate gradients along the dashed edges",
figure 2 of the paper: no second derivatives); `second_order=True` keeps it.

Different dimensions at test: the LSTM is coordinate-wise and `sgd-hd` has scalars only, so both run
on any shapes, as does `l2l-optimizer` with its coordinate-wise transform. The per-tensor optimisers
(`metasgd-optimizer`, `learned-adam`) key their learned values by the parameter's name in
`suite.initial_parameters` (the names are fixed by the suite, the shapes may differ, so a problem with
another dimension is handled). A test problem with other names (`test_problem`: a logistic `w` after a
quadratic `theta`) uses the single meta-trained tensor's values when there was one, else the tensors'
by position when there are as many; anything else is an error naming both lists.

The suite is duck-typed: `initial_parameters(support_x)`, `objective(params, x, y)` and `horizon(split)`
(see the metaopt suite). The adapted state is the optimizee's parameter dict; the suite scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl
from metaharness_plugins._learn2learn import INSTALL_HINT

TRANSFORMS = ("coordinatewise", "kronecker", "metacurvature")


@dataclass(frozen=True)
class UnrolledHparams:
    """What every optimiser meta-trained through its unrolled trajectory shares.

    unroll: optimisation steps per truncation of back-propagation through time (20 of a 100-step horizon).
    meta_lr: Adam's step size for the optimiser's own parameters.
    meta_batch_size: problems optimised together per meta-iteration.
    second_order: keep the optimizee gradient's dependence on the optimiser (Andrychowicz et al. drop it).
    """

    unroll: int = 20
    meta_lr: float = 0.01
    meta_batch_size: int = 16
    second_order: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("unroll", "meta_batch_size"), positive=("meta_lr",))


@dataclass(frozen=True)
class LSTMOptimizerHparams(UnrolledHparams):
    """Andrychowicz et al. 2016, section 3 and appendix A.

    hidden: LSTM units per layer (20; two layers), shared by every coordinate.
    preprocess_p: p of the gradient preprocessing (10): (log|g|/p, sign g) if |g| >= e^-p, else (-1, e^p g).
    output_scale: the LSTM's output times this is the update (0.1).
    meta_lr: Adam's step size for the LSTM's weights (0.001, the paper's).
    unroll, meta_batch_size, second_order: as every unrolled optimiser's (`UnrolledHparams`).
    """

    hidden: int = 20
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    meta_lr: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, at_least_one=("hidden",), positive=("preprocess_p", "output_scale"))


@dataclass(frozen=True)
class MetaSGDOptimizerHparams(UnrolledHparams):
    """SGD with a learned log step size (and logit momentum) per parameter tensor.

    lr_init: the step size every tensor starts from.
    momentum: also learn a heavy-ball momentum per tensor (v <- mu v + g, theta <- theta - lr v).
    momentum_init: mu's starting value, in [0, 1).
    unroll, meta_lr, meta_batch_size, second_order: as every unrolled optimiser's (`UnrolledHparams`).
    """

    lr_init: float = 0.01
    momentum: bool = True
    momentum_init: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("lr_init",))
        if not 0 <= self.momentum_init < 1:
            raise ValueError(f"momentum_init must be in [0, 1), got {self.momentum_init!r}")


@dataclass(frozen=True)
class LearnedAdamHparams(UnrolledHparams):
    """Adam with its step size and betas meta-learned per parameter tensor (lr = exp(a), beta = sigmoid(b)).

    lr_init, beta1_init, beta2_init: starting values (Adam's betas; a step size suited to short horizons).
    eps: Adam's epsilon, fixed (1e-8).
    unroll, meta_lr, meta_batch_size, second_order: as every unrolled optimiser's (`UnrolledHparams`).
    """

    lr_init: float = 0.01
    beta1_init: float = 0.9
    beta2_init: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("lr_init", "eps"))
        for name in ("beta1_init", "beta2_init"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1) (a sigmoid parametrises it), "
                                 f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SGDHDHparams(UnrolledHparams):
    """SGD-HD (Baydin et al. 2018, algorithm "SGD-HD"): alpha_t = alpha_{t-1} + beta g_t . g_{t-1},
    theta_t = theta_{t-1} - alpha_t g_t, one alpha per problem; log alpha_0 and log beta meta-learned.

    lr_init: alpha_0 at the start of meta-training.
    hyper_lr_init: beta at the start of meta-training (Baydin et al. use 0.001 with alpha_0 = 0.001 on
        logistic regression; the product of gradients scales with the problem, so start small).
    unroll, meta_lr, meta_batch_size, second_order: as every unrolled optimiser's (`UnrolledHparams`).
    """

    lr_init: float = 0.01
    hyper_lr_init: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("lr_init", "hyper_lr_init"))


@dataclass(frozen=True)
class L2LOptimizerHparams:
    """learn2learn's LearnableOptimizer, meta-trained online (one-step lookahead, see the module docstring).

    transform: "coordinatewise" (an MLP 1-hidden-1 of each gradient coordinate, shared by all tensors),
        "kronecker" (`KroneckerTransform(KroneckerLinear)` per tensor, learn2learn's example) or
        "metacurvature" (`MetaCurvatureTransform` per tensor); the last two are tied to the tensors'
        shapes at meta-train.
    hidden: hidden units of the coordinate-wise transform's MLP.
    lr: the LearnableOptimizer's fixed `lr` (update = -lr * transform(grad)).
    meta_lr: Adam's step size for the transform, applied after every optimisation step.
    meta_batch_size: problems optimised together.
    """

    transform: str = "coordinatewise"
    hidden: int = 8
    lr: float = 0.01
    meta_lr: float = 0.001
    meta_batch_size: int = 16

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("hidden", "meta_batch_size"), positive=("lr", "meta_lr"))
        if self.transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {self.transform!r}")


_L2O = ("Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul, Shillingford & de Freitas 2016, Learning to "
        "learn by gradient descent by gradient descent (NeurIPS, arXiv:1606.04474)")
_IMPL = "metaharness_plugins.algorithms._learned_optimizers"
_OPT = frozenset({"optimisation"})


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    return [
        AlgorithmSpec(
            name="lstm-optimizer", factory=f"{_IMPL}:LSTMOptimizer", hparams=LSTMOptimizerHparams,
            task_kinds=_OPT,
            description="coordinate-wise 2-layer LSTM optimiser meta-trained by truncated BPTT",
            paper=_L2O, second_order=False),
        AlgorithmSpec(
            name="metasgd-optimizer", factory=f"{_IMPL}:MetaSGDOptimizer", hparams=MetaSGDOptimizerHparams,
            task_kinds=_OPT,
            description="SGD with per-tensor step sizes and momentum learned through the unroll",
            paper=f"Li, Zhou, Chen & Li 2017, Meta-SGD (arXiv:1707.09835); {_L2O}"),
        AlgorithmSpec(
            name="learned-adam", factory=f"{_IMPL}:LearnedAdam", hparams=LearnedAdamHparams, task_kinds=_OPT,
            description="Adam with per-tensor step size and betas learned through the unroll",
            paper=f"Kingma & Ba 2015, Adam (arXiv:1412.6980); {_L2O}"),
        AlgorithmSpec(
            name="sgd-hd", factory=f"{_IMPL}:SGDHD", hparams=SGDHDHparams, task_kinds=_OPT,
            description="SGD with hypergradient lr adaptation; alpha_0 and beta learned through the unroll",
            paper="Baydin, Cornish, Martinez Rubio, Schmidt & Wood 2018, Online Learning Rate Adaptation "
                  "with Hypergradient Descent (ICLR, arXiv:1703.04782)"),
        AlgorithmSpec(
            name="l2l-optimizer", factory=f"{_IMPL}:L2LOptimizer", hparams=L2LOptimizerHparams,
            task_kinds=_OPT,
            description="learn2learn's LearnableOptimizer: a learned gradient transform, one-step "
                        "meta-descent",
            paper="Arnold, Mahajan, Datta, Bunner & Zarkias 2020, learn2learn (arXiv:2008.12284)",
            requires=("learn2learn",), install_hint=INSTALL_HINT),
    ]


# The implementation lives in _learned_optimizers.py, imported by the first cell that needs it.
__getattr__ = forward_attributes(_IMPL)
