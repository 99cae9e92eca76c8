"""Helpers shared by the optimisation suites and the optimisers that run on them: the problem interface
an optimiser relies on, and the loss floor of every log-loss. A plain module: no hooks, no torch.

An optimisation suite (task kind "optimisation", e.g. metaopt) offers, beside the `TaskSuite` methods:
`initial_parameters(support_x)` (theta_0 of one episode's problem), `objective(params, x, y)` (its scalar
loss), `horizon(split)` (T optimiser steps) and `predict(params, x)` (the optimisee's outputs).
"""

from __future__ import annotations

from typing import Any

#: What every optimiser calls on an optimisation suite; `predict` as well where it reports outputs.
PROBLEM_METHODS = ("initial_parameters", "objective", "horizon")
PROBLEM_INTERFACE = (*PROBLEM_METHODS, "predict")
#: Floor of a loss inside log10 (a quadratic with square W reaches 0 exactly).
LOG_FLOOR = 1e-12


def check_problem_suite(algorithm: str, suite: Any, needs: tuple[str, ...] = PROBLEM_INTERFACE) -> None:
    """A TypeError unless `suite` offers every method in `needs`, naming the missing ones."""
    missing = [name for name in needs if not callable(getattr(suite, name, None))]
    if missing:
        raise TypeError(f"{algorithm} optimises the problems of an optimisation suite such as metaopt; "
                        f"suite {type(suite).__name__} lacks {', '.join(missing)}")
