"""Classical numerical-differentiation baselines: learners that fit one task's support points without
any meta-learning and answer its derivatives, as rows of the same leaderboards as the meta-learners.

- `fd-central`: second-order finite differences on the sorted (non-uniformly spaced) support points,
  the three-point weights of Fornberg (1988), "Generation of Finite Difference Formulas on Arbitrarily
  Spaced Grids", Mathematics of Computation 51(184), one-sided at the ends; the second derivative is the
  three-point non-uniform second difference. Between support points the estimates are interpolated
  linearly (held constant outside them).
- `fd-forward`: first-order one-sided (forward) differences, the same interpolation.
- `spline`: a cubic smoothing spline (Reinsch 1967, "Smoothing by Spline Functions", Numerische
  Mathematik 10), its penalty chosen by generalised cross-validation (Craven & Wahba 1979, "Smoothing
  Noisy Data with Spline Functions", Numerische Mathematik 31) unless given, differentiated analytically.
- `local-poly`: a local least-squares polynomial over the nearest support points of each query point,
  the derivative read from its coefficients (Savitzky & Golay 1964, "Smoothing and Differentiation of
  Data by Simplified Least Squares Procedures", Analytical Chemistry 36(8), on irregular points).
- `scratch-net`: the suite's own network trained from scratch on the support set with Adam (Kingma & Ba
  2015), differentiated by the harness through autograd: what a network learns from K points alone.

None of them meta-learns: `meta_train_step` does nothing and returns 0.0, they have no meta-parameters
(the record's `params` is 0) and one "adaptation step" is the whole fit (`test_steps` 0). The check
functions here reject a suite configuration with too few support points before any cell runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness import AlgorithmSpec, check_ranges, forward_attributes, hookimpl

#: Highest polynomial degree of `local-poly`: past it a least-squares fit on a handful of points is
#: ill-conditioned and oscillates (Runge), which no derivative study wants.
MAX_DEGREE = 10
#: `scipy.interpolate.make_smoothing_spline` refuses fewer points ("length must be at least 5").
SPLINE_MIN_POINTS = 5
#: Derivative orders the finite differences answer (three-point stencils give f' and f'').
FD_MAX_ORDER = 2
#: A cubic spline's derivatives up to the third (piecewise constant) exist.
SPLINE_MAX_ORDER = 3


def support_sizes(suite_config: Any) -> list[int]:
    """The support-set sizes a suite configuration gives (meta-train/validation `shots`, test `test_shots`,
    None meaning the same); empty when the suite has no `shots` (nothing to check before it runs)."""
    shots = getattr(suite_config, "shots", None)
    if not isinstance(shots, int) or isinstance(shots, bool):
        return []
    test_shots = getattr(suite_config, "test_shots", None)
    if isinstance(test_shots, int) and not isinstance(test_shots, bool):
        return [shots, test_shots]
    return [shots]


class SupportRule:
    """What a method needs from a task: the hyper-parameters of each baseline derive from this, so the
    grid's check (`check`, torch-free) and the implementation (which must not import this plugin module)
    apply the same rule. `method` is the algorithm's name, for messages."""

    method: ClassVar[str] = ""

    def requirement(self, order: int) -> tuple[int, str]:
        """(fewest distinct support points, why) to answer derivatives up to `order`; ValueError for an
        order the method cannot answer at all."""
        return 1, ""

    def impossible(self, suite_name: str, suite_config: Any) -> str:
        """"" when the method can run on the suite configuration, else why not."""
        order = getattr(suite_config, "order", 1)
        try:
            need, why = self.requirement(order)
        except ValueError as exc:
            return str(exc)
        where = f"suite {suite_name!r}" if suite_name else "the suite"
        for k in support_sizes(suite_config):
            if k < need:
                what = "a first derivative" if order == 1 else f"derivatives up to order {order}"
                return (f"{self.method} needs at least {need} support points for {what} ({why}); "
                        f"{where} gives K = {k} (shots / test_shots)")
        return ""


def check(hparams: SupportRule, suite_name: str, suite_config: Any) -> str:
    """The `AlgorithmSpec.check` of every baseline here: "" when it can run on the suite configuration,
    else why not (too few support points for the stencil, the spline or the degree; too high an order;
    inputs of more than one dimension, which a stencil or a spline along one axis cannot take)."""
    dim = getattr(suite_config, "dim", 1)
    if isinstance(dim, int) and dim > 1:
        return f"{hparams.method} works on one input dimension; {suite_name} has dim = {dim}"
    return hparams.impossible(suite_name, suite_config)


@dataclass(frozen=True)
class CentralDifferenceHparams(SupportRule):
    """Central finite differences have no hyper-parameters: the stencil is fixed (three points)."""

    method: ClassVar[str] = "fd-central"

    def requirement(self, order: int) -> tuple[int, str]:
        if order > FD_MAX_ORDER:
            raise ValueError(f"{self.method} answers derivatives up to order {FD_MAX_ORDER}, the suite asks "
                             f"for order {order}")
        if order == 2:
            return 3, "a second difference needs three points"
        return 2, "a finite difference needs two points"


@dataclass(frozen=True)
class ForwardDifferenceHparams(CentralDifferenceHparams):
    """Forward finite differences have no hyper-parameters: the stencil is fixed (two points; three
    for f'')."""

    method: ClassVar[str] = "fd-forward"


@dataclass(frozen=True)
class SplineHparams(SupportRule):
    """smoothing: the penalty lam of the smoothing spline (scipy's `make_smoothing_spline`: it minimises
    sum (y_i - g(x_i))^2 + lam * integral g''(x)^2 dx); 0 interpolates the points (a natural cubic
    spline); None chooses lam per task by generalised cross-validation (Craven & Wahba 1979).
    """

    method: ClassVar[str] = "spline"
    smoothing: float | None = None

    def __post_init__(self) -> None:
        if self.smoothing is not None and not self.smoothing >= 0:
            raise ValueError(f"smoothing must be None (chosen by GCV) or a penalty >= 0, "
                             f"got {self.smoothing!r}")

    def requirement(self, order: int) -> tuple[int, str]:
        if order > SPLINE_MAX_ORDER:
            raise ValueError(f"a cubic spline has derivatives up to order {SPLINE_MAX_ORDER}, the suite asks "
                             f"for order {order}")
        return SPLINE_MIN_POINTS, f"scipy's make_smoothing_spline needs at least {SPLINE_MIN_POINTS} points"


@dataclass(frozen=True)
class LocalPolyHparams(SupportRule):
    """degree: the local polynomial's degree (2 by default: for the first derivative an even degree
        is as good as the next odd one, Fan & Gijbels 1996, section 3.3; use 3 for second derivatives).
    window: support points in each local fit, the nearest to the query point; None means degree + 2
        (one more point than the polynomial has coefficients, so the fit is a least-squares one that
        smooths a little); a window above the task's K uses all K points.
    """

    method: ClassVar[str] = "local-poly"
    degree: int = 2
    window: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.degree <= MAX_DEGREE:
            raise ValueError(f"degree must be from 1 (a constant has no derivative) to {MAX_DEGREE}, "
                             f"got {self.degree!r}")
        if self.window is not None and self.window < self.degree + 1:
            raise ValueError(f"window must be None or at least degree + 1 = {self.degree + 1} points "
                             f"(a degree {self.degree} polynomial has {self.degree + 1} coefficients), "
                             f"got {self.window!r}")

    @property
    def effective_window(self) -> int:
        """Points per local fit before clipping to K: `window`, or degree + 2 when it is None."""
        return self.degree + 2 if self.window is None else self.window

    def requirement(self, order: int) -> tuple[int, str]:
        if order > self.degree:
            raise ValueError(f"a degree {self.degree} polynomial has no useful derivative of order {order} "
                             f"(set degree >= {order})")
        return self.degree + 1, f"a degree {self.degree} polynomial needs {self.degree + 1} points"


@dataclass(frozen=True)
class ScratchNetHparams(SupportRule):
    """lr: Adam's step size for fitting the network to one task's support points (0.01).
    fit_steps: full-batch Adam steps per task (500: a 1-40-40-1 MLP fits 10 sine points in about that).
    """

    method: ClassVar[str] = "scratch-net"
    lr: float = 0.01
    fit_steps: int = 500

    def __post_init__(self) -> None:
        check_ranges(self, at_least_one=("fit_steps",), positive=("lr",))


PAPERS = {
    "fd-central": "Fornberg 1988, Generation of Finite Difference Formulas on Arbitrarily Spaced Grids "
                  "(Mathematics of Computation 51)",
    "fd-forward": "Fornberg 1988, Generation of Finite Difference Formulas on Arbitrarily Spaced Grids "
                  "(Mathematics of Computation 51): the one-sided two-point stencil",
    "spline": "Reinsch 1967, Smoothing by Spline Functions (Numerische Mathematik 10); Craven & Wahba 1979, "
              "Smoothing Noisy Data with Spline Functions (Numerische Mathematik 31)",
    "local-poly": "Savitzky & Golay 1964, Smoothing and Differentiation of Data by Simplified Least Squares "
                  "Procedures (Analytical Chemistry 36)",
    "scratch-net": "baseline: the suite's network trained from scratch on the support set with Adam "
                   "(Kingma & Ba 2015), differentiated by autograd",
}


@hookimpl
def harness_register_algorithms() -> list[AlgorithmSpec]:
    impl = "metaharness_plugins.algorithms._derivative_baselines"
    regression = frozenset({"regression"})
    numpy, scipy = ("numpy",), ("numpy", "scipy")
    return [
        AlgorithmSpec(name="fd-central", factory=f"{impl}:CentralDifferences",
                      hparams=CentralDifferenceHparams,
                      task_kinds=regression, paper=PAPERS["fd-central"], requires=numpy, check=check,
                      description="no meta-learning: 3-point non-uniform central differences on the support "
                                  "points, interpolated linearly"),
        AlgorithmSpec(name="fd-forward", factory=f"{impl}:ForwardDifferences",
                      hparams=ForwardDifferenceHparams,
                      task_kinds=regression, paper=PAPERS["fd-forward"], requires=numpy, check=check,
                      description="no meta-learning: one-sided forward differences on the support points, "
                                  "interpolated linearly"),
        AlgorithmSpec(name="spline", factory=f"{impl}:SmoothingSpline", hparams=SplineHparams,
                      task_kinds=regression, paper=PAPERS["spline"], requires=scipy, check=check,
                      description="no meta-learning: cubic smoothing spline (penalty by GCV), differentiated "
                                  "analytically"),
        AlgorithmSpec(name="local-poly", factory=f"{impl}:LocalPolynomial", hparams=LocalPolyHparams,
                      task_kinds=regression, paper=PAPERS["local-poly"], requires=numpy, check=check,
                      description="no meta-learning: Savitzky-Golay style local least-squares polynomial "
                                  "over the nearest support points"),
        AlgorithmSpec(name="scratch-net", factory=f"{impl}:ScratchNet", hparams=ScratchNetHparams,
                      task_kinds=regression, paper=PAPERS["scratch-net"],
                      description="no meta-learning: the suite's network fitted from scratch to the support "
                                  "set (Adam), derivatives by autograd"),
    ]


# The implementations live in _derivative_baselines.py, imported by the first cell that needs them.
__getattr__ = forward_attributes("metaharness_plugins.algorithms._derivative_baselines")
