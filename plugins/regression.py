"""Helpers shared by the K-shot regression plugins (sinusoid, derivatives, cnp, alpaca): episode sizes,
the MLPs' non-linearities, and their checks.

A plain module: no hooks, no torch. A suite's config dataclass subclasses `EpisodeSizes` (fields `shots`,
`test_shots`, `query`, `test_query` stay its own, so their defaults and documentation do too) and calls
`check_sizes` from its `__post_init__`. An `activation` option takes one of `ACTIVATIONS`, checked by
`check_activation`; `metaharness_plugins.backbones.activation` builds the module.
"""

from __future__ import annotations

from typing import Any

from harness.specs import SPLITS

MAX_POINTS = 100_000  # support or query points per task: far past any study, short of exhausting memory
# The regression MLPs' hidden non-linearities: the papers' ReLU, or a smooth one (whose second derivative
# is not zero, and under which the loss is smooth in the parameters).
ACTIVATIONS = ("relu", "tanh", "softplus")


def check_activation(value: object) -> None:
    """A ValueError unless `value` names one of ACTIVATIONS."""
    if value not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {value!r}")


def check_second_derivatives(algorithm: str, activation: str, suite: str, config: Any) -> str:
    """An `AlgorithmSpec.check` message when `suite` scores second derivatives (`order` 2) of a learner's
    own ReLU network, whose second derivative in x is zero everywhere it exists; '' otherwise."""
    order = getattr(config, "order", 1)
    if order >= 2 and activation == "relu":
        return (f"suite {suite!r} scores second derivatives (order {order}) and a ReLU network's are zero; "
                f"set {algorithm}'s activation to 'tanh' or 'softplus'")
    return ""


def check_count(name: str, value: object, low: int, need: str) -> None:
    """A ValueError unless `value` is an integer from `low` to MAX_POINTS; `need` says why `low`."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_POINTS:
        raise ValueError(f"{name} must be an integer from {low} to {MAX_POINTS:,} ({need}), got {value!r}")


def check_sizes(config: Any, query_low: int = 1, query_need: str = "at least one query point per task") -> None:
    """Check `shots`, `test_shots` (None: the same as `shots`), `query` and `test_query` of a config."""
    check_count("shots", config.shots, 1, "K >= 1")
    if config.test_shots is not None:
        check_count("test_shots", config.test_shots, 1, "K >= 1")
    check_count("query", config.query, query_low, query_need)
    check_count("test_query", config.test_query, query_low, query_need)


class EpisodeSizes:
    """What a K-shot regression config derives from its sizes (a mixin for its frozen dataclass)."""

    shots: int
    test_shots: int | None
    query: int
    test_query: int

    @property
    def effective_test_shots(self) -> int:
        """K at meta-test: `test_shots`, or `shots` when it is unset."""
        return self.shots if self.test_shots is None else self.test_shots

    def sizes(self, split: str) -> tuple[int, int]:
        """(support points, query points) per task in `split`: the test sizes at "test", else the others."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if split == "test":
            return self.effective_test_shots, self.test_query
        return self.shots, self.query
