"""metaharness: a plugin-based benchmarking harness for meta-learning in PyTorch.

The public API for plugin authors is what this module exports.
"""

from __future__ import annotations

import pluggy

from harness.base import Algorithm, Backend, TaskSuite, split_classifier
from harness.errors import GridError, HarnessError, PluginError, UsageError
from harness.specs import AlgorithmSpec, BackendSpec, Budget, Cell, TaskBatch, TaskSuiteSpec, check_ranges

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("harness")

__all__ = [
    "Algorithm",
    "AlgorithmSpec",
    "Backend",
    "BackendSpec",
    "Budget",
    "Cell",
    "GridError",
    "HarnessError",
    "PluginError",
    "TaskBatch",
    "TaskSuite",
    "TaskSuiteSpec",
    "UsageError",
    "__version__",
    "check_ranges",
    "hookimpl",
    "split_classifier",
]
