"""The `ray` executor: each cell a Ray task, on a local Ray instance or an existing Ray cluster.

Ray (Moritz et al. 2018, "Ray: A Distributed Framework for Emerging AI Applications", OSDI) schedules
each cell as a task whose resources come from the cell's backend and budget (CPUs = `threads`, one GPU
for a `cuda` cell, memory = `memory_limit`). On its node the task runs the cell in the cell's own
supervised process tree with its hard timeout, exactly as `serial` does, and returns the record; the
driver (the `harness run` process) writes it. `--address HOST:PORT` (or `RAY_ADDRESS`) joins a cluster;
without one a local Ray instance is started for the run and stopped after it.
"""

from __future__ import annotations

from harness import ExecutorSpec, forward_attributes, hookimpl


@hookimpl
def harness_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec(name="ray", factory="metaharness_plugins.executors._ray:RayExecutor",
                         description="cells as Ray tasks on a Ray cluster (--address HOST:PORT or "
                                     "RAY_ADDRESS), else on a local Ray instance; timings not exclusive",
                         requires=("ray",), install_hint="pip install 'metaharness[ray]'")]


# The implementation lives in _ray.py, imported when a run uses it (importing Ray takes about a second).
__getattr__ = forward_attributes("metaharness_plugins.executors._ray")
