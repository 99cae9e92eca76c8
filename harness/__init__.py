"""metaharness: a plugin-based benchmarking harness for meta-learning in PyTorch.

The public API for plugin authors is what this module exports, imported on first use (PEP 562), so
`import harness.cli` is instant and the command can take over Ctrl-C and termination signals at once.
Nothing here imports torch: the base classes and specs import it only where they use it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from harness.errors import GridError, HarnessError, PluginError, UsageError

if TYPE_CHECKING:
    from harness.base import Algorithm, Backend, Predictor, TaskSuite, split_classifier
    from harness.measuring import Measurement
    from harness.specs import (
        ADDED_LATER,
        RESULT_NEUTRAL,
        AlgorithmSpec,
        BackendSpec,
        Budget,
        Cell,
        LazyFactory,
        TaskBatch,
        TaskSuiteSpec,
        check_ranges,
        forward_attributes,
    )

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("harness")

_LAZY = {
    **dict.fromkeys(("Algorithm", "Backend", "Predictor", "TaskSuite", "split_classifier"), "harness.base"),
    **dict.fromkeys(("AlgorithmSpec", "BackendSpec", "Budget", "Cell", "ExecutorSpec", "LazyFactory",
                     "MeasurementSpec", "ADDED_LATER", "RESULT_NEUTRAL", "TaskBatch", "TaskSuiteSpec",
                     "check_ranges", "forward_attributes"), "harness.specs"),
    "Measurement": "harness.measuring",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ADDED_LATER",
    "Algorithm",
    "AlgorithmSpec",
    "Backend",
    "BackendSpec",
    "Budget",
    "Cell",
    "ExecutorSpec",
    "GridError",
    "HarnessError",
    "LazyFactory",
    "Measurement",
    "MeasurementSpec",
    "PluginError",
    "Predictor",
    "RESULT_NEUTRAL",
    "TaskBatch",
    "TaskSuite",
    "TaskSuiteSpec",
    "UsageError",
    "__version__",
    "check_ranges",
    "forward_attributes",
    "hookimpl",
    "split_classifier",
]
