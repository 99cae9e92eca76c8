"""The `serial` executor: one cell at a time on this machine, in the harness's own process tree (the default).

The only mode whose timings are exclusive (no other cell of the run shares the machine). The executor
itself is the core's (`harness.executors.SerialExecutor`), which a run also falls back on when this
plugin is blocked; registering it here lists it beside the others and lets a grid name it.
"""

from __future__ import annotations

from harness import ExecutorSpec, hookimpl


@hookimpl
def harness_register_executors() -> list[ExecutorSpec]:
    return [ExecutorSpec(name="serial", factory="harness.executors:SerialExecutor",
                         description="one cell at a time on this machine; exclusive timings (the default)")]
