"""Optimisation problems as tasks: the setting of Andrychowicz, Denil, Gomez, Hoffman, Pfau, Schaul,
Shillingford & de Freitas (2016), "Learning to learn by gradient descent by gradient descent", NeurIPS,
where the meta-learned object is the optimiser and each task (episode) is one problem to minimise.

Problems (`problem`):

- "quadratic": f(theta) = 0.5 * ||W theta - y||^2 with W of shape [n, dim] and y ~ N(0, I_n), the
  paper's section 3.1 task (there dim = n = 10 with Gaussian W; the factor 0.5 is ours). Here W =
  U diag(s) V^T with U, V Haar-random orthonormal (QR of Gaussian matrices with the signs of R's diagonal
  fixed, Mezzadri 2007, "How to generate random matrices from the classical compact groups", Notices of
  the AMS 54(5)) and singular values s log-spaced from 1 to sqrt(condition), so the Hessian W^T W has
  eigenvalues log-spaced from mu = 1 to L = condition and cond(W^T W) = `condition` exactly, whatever
  `dim` is (L does not grow with the dimension, so a step size tuned at dim 10 stays stable at dim 100).
- "logistic": mean binary cross-entropy of logistic regression (no bias) on synthetic data, plus
  0.5 * l2 * ||w||^2. Features are z diag(s) V^T, z ~ N(0, I), with s log-spaced from 1 to
  sqrt(condition) (feature covariance of condition number `condition`). Labels come from a random
  hyperplane through the origin, 1[x . w* > 0], each flipped with probability `label_noise` (0.1) by
  default, so the objective has a minimiser; `separable = true` keeps them unflipped, linearly separable by
  construction: the loss then has no minimiser (it tends to 0 as ||w|| grows along w*), so the largest
  stable step size wins.
- "mlp": the paper's section 3.2 optimisee, one hidden layer of `hidden` (20) sigmoid units, trained with
  mean cross-entropy on a random subset of scikit-learn's 8x8 digits (`sklearn.datasets.load_digits`,
  the UCI optical digits of Alpaydin & Kaynak 1995, shipped with scikit-learn; pixels scaled to [0, 1])
  in place of MNIST (`data = "digits"`); or mean squared error on synthetic regression data from a random
  one-hidden-layer sigmoid teacher (`data = "synthetic"`, inputs as for "logistic"). The 1797 digits are
  split once (a fixed permutation) into disjoint pools for train / val / test problems.

The objective of an episode is its training loss, as in the paper: query_x / query_y are the same tensors
as support_x / support_y. The metric (`final_loss`, lower is better) is the objective at the optimiser's
iterate after the horizon T, and the harness records it after every step 0..T, with two trajectory
metrics per episode: the mean over steps of log10 loss (the area under the log-loss curve) and the steps
to reach `target_ratio` times the initial loss (or the absolute `target`; T + 1 = not reached).

Out-of-distribution testing (`test_dim`, `test_condition`, `test_problem`, `test_steps`) changes the test
split only; train and validation problems always come from the training distribution.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from harness import TaskSuiteSpec, forward_attributes, hookimpl

PROBLEMS = ("quadratic", "logistic", "mlp")
DATASETS = ("digits", "synthetic")
DTYPES = ("float32", "float64")
MAX_DIM = 10_000  # far past any study here; stops a typo from allocating a [n, 10^7] matrix per episode
MAX_CONDITION = 1e12  # beyond this float64 cannot represent W^T W's smallest eigenvalue beside its largest
MAX_STEPS = 1_000_000
MAX_SAMPLES = 1_000_000  # data points per problem
#: scikit-learn's digits: 1797 images of 8x8 = 64 pixels, 10 classes; split into disjoint problem pools.
DIGITS_IMAGES, DIGITS_PIXELS, DIGITS_CLASSES = 1797, 64, 10
DIGITS_POOLS = {"train": 1078, "val": 269, "test": 450}  # 60% / 15% / 25% of a fixed permutation
#: Data points per problem when `samples` is unset: W is square for quadratics (the paper's 10 x 10); the
#: paper's MNIST minibatch for the MLP.
LOGISTIC_SAMPLES_PER_DIM, MLP_SAMPLES = 10, 128


class Setting(NamedTuple):
    """What one split's problems are: kind, dimension, condition number, data points per problem."""

    problem: str
    dim: int
    condition: float
    samples: int

    def text(self, data: str) -> str:
        """"quadratic dim 10 cond 10", "mlp on digits"."""
        if self.problem == "mlp" and data == "digits":
            return "mlp on digits"
        kind = "mlp (synthetic)" if self.problem == "mlp" else self.problem
        return f"{kind} dim {self.dim} cond {self.condition:g}"


@dataclass(frozen=True)
class MetaOptConfig:
    """The problem distribution of meta-training (and validation) and, through test_*, of meta-test.

    problem: "quadratic", "logistic" or "mlp". dim: quadratic dimension, logistic features, synthetic mlp
    inputs (digits have 64 pixels whatever `dim` says). condition: cond(W^T W) of a quadratic, condition
    number of the feature covariance of logistic and synthetic mlp data (unused by digits). samples: rows
    of W / data points per problem (None: dim for quadratics, 10 * dim for logistic, 128 for mlp).
    separable, label_noise, l2: logistic only. data, hidden: mlp only. steps: horizon T at meta-train and
    validation; test_steps: T at meta-test (None = steps). test_dim, test_condition, test_problem: the
    meta-test distribution (None = as trained). target_ratio / target: the trajectory metric
    steps_to_target counts steps until the loss is <= target (absolute) when `target` is set, else
    <= target_ratio * the initial loss. dtype: of the episodes and iterates ("float64" for numerics).
    """

    problem: str = "quadratic"
    dim: int = 10
    condition: float = 10.0
    samples: int | None = None
    separable: bool = False
    label_noise: float = 0.1
    l2: float = 0.0
    data: str = "digits"
    hidden: int = 20
    steps: int = 100
    test_steps: int | None = None
    test_dim: int | None = None
    test_condition: float | None = None
    test_problem: str | None = None
    target_ratio: float = 1e-2
    target: float | None = None
    dtype: str = "float32"

    #: What the implementation needs to know of the digits (it imports no plugin module).
    digits_pools: ClassVar[dict[str, int]] = DIGITS_POOLS
    digits_classes: ClassVar[int] = DIGITS_CLASSES

    def __post_init__(self) -> None:
        for name, valid in (("problem", PROBLEMS), ("test_problem", PROBLEMS), ("data", DATASETS),
                            ("dtype", DTYPES)):
            value = getattr(self, name)
            if not (value is None and name == "test_problem") and value not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {value!r}")
        for name in ("dim", "test_dim", "samples", "hidden", "steps", "test_steps"):
            value = getattr(self, name)
            top = MAX_STEPS if "steps" in name else MAX_SAMPLES if name == "samples" else MAX_DIM
            if value is None and name.startswith(("test_", "samples")):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top:,}, got {value!r}")
        for name in ("condition", "test_condition"):
            value = getattr(self, name)
            if value is None and name == "test_condition":
                continue
            if not isinstance(value, (int, float)) or not 1 <= value <= MAX_CONDITION:
                raise ValueError(f"{name} must be a condition number from 1 to {MAX_CONDITION:g} "
                                 f"(largest over smallest curvature), got {value!r}")
        if not 0 <= self.label_noise <= 0.5:
            raise ValueError(f"label_noise must be a flip probability in [0, 0.5], got {self.label_noise!r}")
        if not self.separable and self.label_noise == 0:
            raise ValueError("label_noise must be > 0 when separable is false (without flipped labels the "
                             "hyperplane's labels are separable)")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0 (a ridge penalty), got {self.l2!r}")
        if not 0 < self.target_ratio <= 1:
            raise ValueError(f"target_ratio must be in (0, 1] (a fraction of the initial loss), "
                             f"got {self.target_ratio!r}")
        if self.target is not None and not self.target >= 0:
            raise ValueError(f"target must be None or an absolute loss >= 0, got {self.target!r}")
        digits = self.data == "digits"
        if digits and "mlp" in (self.problem, self.test_problem) and (self.test_dim or self.test_condition):
            raise ValueError("test_dim and test_condition do not apply to mlp on digits (64 pixels, real "
                             "data); use data = \"synthetic\" to vary them, or leave them unset")
        for split in ("train", "test"):
            self._check_setting(split, self.setting(split))

    def _check_setting(self, split: str, s: Setting) -> None:
        where = "" if split == "train" else "test_"
        if s.problem != "mlp" or self.data == "synthetic":
            if s.dim == 1 and s.condition != 1:
                raise ValueError(f"{where}condition must be 1 when {where}dim is 1 (one coordinate has one "
                                 f"curvature), got {s.condition!r}")
        if s.problem == "quadratic" and s.samples < s.dim:
            raise ValueError(f"samples must be >= {where}dim for quadratics (W^T W must be invertible for "
                             f"its condition number to be {s.condition:g}), got samples={s.samples} with "
                             f"dim={s.dim}")
        if s.problem == "mlp" and self.data == "digits":
            splits = ("train", "val") if split == "train" else ("test",)
            pool = min(DIGITS_POOLS[name] for name in splits)
            if s.samples > pool:
                raise ValueError(f"samples must be at most {pool} for mlp on digits (the {'/'.join(splits)} "
                                 f"pool holds {pool} images), got {s.samples}")

    def setting(self, split: str) -> Setting:
        """The problems of `split`: the training distribution for train and val, test_* for test."""
        test = split == "test"
        problem = self.test_problem if test and self.test_problem is not None else self.problem
        dim = self.test_dim if test and self.test_dim is not None else self.dim
        condition = float(self.test_condition if test and self.test_condition is not None else self.condition)
        if problem == "mlp" and self.data == "digits":
            dim, condition = DIGITS_PIXELS, 1.0
        samples = self.samples
        if samples is None:
            default = {"quadratic": dim, "logistic": LOGISTIC_SAMPLES_PER_DIM * dim, "mlp": MLP_SAMPLES}
            samples = default[problem]
        return Setting(problem, dim, condition, samples)

    def horizon(self, split: str) -> int:
        """T of `split`: `steps` for train and val, `test_steps` (or `steps`) for test."""
        return self.test_steps if split == "test" and self.test_steps is not None else self.steps

    def distribution_note(self) -> str:
        """Whether the test problems are in distribution, and if not exactly what differs."""
        train, test = self.setting("train"), self.setting("test")
        if train.problem != test.problem:
            what = test.text(self.data)
        else:
            what = ", ".join(f"{name} {value:g}" for name, value, before in
                             (("dim", test.dim, train.dim), ("cond", test.condition, train.condition))
                             if value != before)
        if self.horizon("test") != self.steps:
            longer = f"T = {self.horizon('test')} (trained with T = {self.steps})"
            what = ", ".join(filter(None, (what, longer)))
        if not what:
            return f"in distribution: trained and tested on {train.text(self.data)}, T = {self.steps}"
        return f"out of distribution: trained on {train.text(self.data)}, tested on {what}"


def check(config: MetaOptConfig) -> str:
    """Why a configuration cannot run here ("" when it can): mlp on digits needs scikit-learn."""
    digits = config.data == "digits" and "mlp" in (config.problem, config.test_problem)
    if digits and importlib.util.find_spec("sklearn") is None:
        return "mlp on digits reads sklearn.datasets.load_digits: pip install scikit-learn"
    return ""


@hookimpl
def harness_register_task_suites() -> list[TaskSuiteSpec]:
    return [
        TaskSuiteSpec(
            name="metaopt",
            factory="metaharness_plugins.suites._metaopt:MetaOptSuite",
            config=MetaOptConfig,
            task_kind="optimisation",
            description="optimisation problems as tasks (quadratics of set condition, logistic regression, "
                        "a sigmoid MLP on 8x8 digits); metric: the objective after T optimiser steps",
            paper="Andrychowicz et al. 2016, Learning to learn by gradient descent by gradient descent "
                  "(NeurIPS), sections 3.1-3.2",
            check=check,
            # The horizon and the target change how problems are scored, not which problems are drawn.
            episode_neutral=("steps", "test_steps", "target_ratio", "target"),
        )
    ]


# The implementation lives in _metaopt.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.suites._metaopt")
