"""The `local` executor: N cells at once on this machine, cores and GPUs partitioned between them.

Like pytest-xdist's workers, but each cell keeps its own supervised process tree with its hard timeout
(`harness.cellprocess`), started from the run's fork server. Each running cell is pinned to cores of its
own (as many as its budget's `threads`), so cells never oversubscribe the machine; on a CUDA machine each
cell of a `cuda` backend sees one GPU of its own (`CUDA_VISIBLE_DEVICES`). Records say that cells shared
the machine (`execution.exclusive` false, `concurrent_cells`), and leaderboards mark such timings.
"""

from __future__ import annotations

from harness import ExecutorSpec, forward_attributes, hookimpl


@hookimpl
def harness_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec(name="local", factory="metaharness_plugins.executors._local:LocalExecutor",
                         description="N cells at once on this machine (--workers, default one per core or per "
                                     "GPU), each pinned to cores of its own; timings not exclusive")]


# The implementation lives in _local.py, imported when a run uses it.
__getattr__ = forward_attributes("metaharness_plugins.executors._local")
