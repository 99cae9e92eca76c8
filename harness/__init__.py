"""metaharness: a plugin-based benchmarking harness for meta-learning in PyTorch.

The public API for plugin authors is what this module exports. The names that need torch are imported
on first use (PEP 562), so `import harness.cli` is instant and the command can take over Ctrl-C and
termination signals before torch starts loading.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import pluggy

from harness.errors import GridError, HarnessError, PluginError, UsageError

if TYPE_CHECKING:
    from harness.base import Algorithm, Backend, TaskSuite, split_classifier
    from harness.specs import AlgorithmSpec, BackendSpec, Budget, Cell, TaskBatch, TaskSuiteSpec, check_ranges

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("harness")

_LAZY = {
    **dict.fromkeys(("Algorithm", "Backend", "TaskSuite", "split_classifier"), "harness.base"),
    **dict.fromkeys(("AlgorithmSpec", "BackendSpec", "Budget", "Cell", "TaskBatch", "TaskSuiteSpec", "check_ranges"),
                    "harness.specs"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


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
