"""The predictive likelihood of probabilistic regressors: the `gaussian-nll` measurement, the Gaussian
negative log-likelihood of every query target under the adapted learner's predictive distribution, and
the coverage of its central intervals (the fraction of targets inside them), a calibration check.

The conditional neural process is trained and compared in the NP literature by exactly this number
(Garnelo et al. 2018, "Conditional Neural Processes", ICML, section 4.1: the log-likelihood of the
targets), beside the MSE of its mean that the regression suites score. It is measured for learners
that state a Gaussian predictive distribution (`Algorithm.predict_distribution`, the CNP's); a learner
that predicts points only leaves its columns blank: a likelihood needs a variance, and inventing one for
it would rank the invention, not the learner.

A well-calibrated learner covers a fraction close to each level: below the level it is over-confident,
above it under-confident (the tables show the fraction; neither direction ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness import MeasurementSpec, forward_attributes, hookimpl

MAX_LEVELS = 20


@dataclass(frozen=True)
class GaussianNLLOptions:
    """coverage: levels of the central predictive intervals whose coverage is measured, each in (0, 1), one
        column each; an empty list measures the log-likelihood alone.
    """

    coverage: tuple[float, ...] = (0.5, 0.95)

    def __post_init__(self) -> None:
        levels = self.coverage
        if (not isinstance(levels, (list, tuple)) or len(levels) > MAX_LEVELS
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           and 0 < v < 1 for v in levels)):
            raise ValueError(f"coverage must be a list of at most {MAX_LEVELS} interval levels strictly between "
                             f"0 and 1, e.g. [0.5, 0.95], got {levels!r}")
        names = [self.level_name(float(v)) for v in levels]
        if len(set(names)) != len(names):
            raise ValueError(f"coverage levels must be distinct (each names a column), got {levels!r}")
        object.__setattr__(self, "coverage", tuple(float(v) for v in levels))

    @staticmethod
    def level_name(level: float) -> str:
        """How a level appears in a column name, coverage_<level>: 0.5, 0.95."""
        return f"{level:g}"


@hookimpl
def harness_register_measurements() -> list[MeasurementSpec]:
    return [
        MeasurementSpec(
            name="gaussian-nll",
            factory="metaharness_plugins.analysis._likelihood:GaussianNLL",
            options=GaussianNLLOptions,
            description="Gaussian negative log-likelihood of the query targets under the adapted learner's "
                        "predictive distribution, and its central intervals' coverage (learners that predict "
                        "a distribution, such as cnp; blank for point predictors)",
            task_kinds=frozenset({"regression"}),
        ),
    ]


# The implementation lives in _likelihood.py, imported by the first cell that needs it.
__getattr__ = forward_attributes("metaharness_plugins.analysis._likelihood")
