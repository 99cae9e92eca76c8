"""Every `harness_*` hook a plugin may implement, grouped by the phase of a run in which it is called.

Hooks are called with keyword arguments; an implementation may accept any subset of them, so a
spec can gain arguments without breaking plugins. Registration hooks return lists that the
registry flattens and checks for duplicate names.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("harness")


# --- start-up: options and configuration (historic: plugins registered late still see them) ---


@hookspec(historic=True)
def harness_addoption(parser: Any) -> None:
    """Add command-line options to `harness run` (an `argparse` argument group).

    Called once by the CLI before it parses arguments; historic, so a plugin loaded later by
    `-p` still receives the call. Options land on the `config.options` namespace.
    """


@hookspec(historic=True)
def harness_configure(config: Any) -> None:
    """Called once the command line is parsed and every plugin is loaded, with the run's Config.

    Historic: a plugin registered after configuration is called at registration time.
    """


# --- registration: what a plugin offers ---


@hookspec
def harness_register_algorithms() -> list[Any]:
    """Return a list of `AlgorithmSpec` this plugin offers. Called once when the registry is built."""


@hookspec
def harness_register_task_suites() -> list[Any]:
    """Return a list of `TaskSuiteSpec` this plugin offers. Called once when the registry is built."""


@hookspec
def harness_register_backends() -> list[Any]:
    """Return a list of `BackendSpec` this plugin offers. Called once when the registry is built."""


@hookspec
def harness_register_executors() -> list[Any]:
    """Return a list of `ExecutorSpec` this plugin offers (how cells reach processes, GPUs, machines).

    Called once when the registry is built. `harness run --executor NAME` (or a grid's `executor` key)
    picks one; the bundled ones are `serial` (the default), `local` and `ray`.
    """


@hookspec
def harness_register_measurements() -> list[Any]:
    """Return a list of `MeasurementSpec` this plugin offers: extra measurements of the adapted learners.

    Called once when the registry is built. A grid enables them by name, at the top level or in a block
    (`measurements = [{ name = "lipschitz" }, { name = "noise-robustness", sigmas = [0.01, 0.1] }]`); the
    runner then builds each one in the cell's process (`MeasurementSpec.factory(options=, suite=)`) and
    calls its `measure` on every test episode's adapted learner. Each column it returns lands in the
    record's `measurements` (mean and 95% interval over the episodes) and in the leaderboards. Cells
    without measurements are run and fingerprinted exactly as if this hook did not exist.
    """


@hookspec
def harness_register_grids() -> dict[str, Any]:
    """Return {grid name: path of a TOML grid file} for grids this plugin ships.

    The harness's own grids (smoke, default, full) come from its builtin grids plugin.
    """


# --- running a cell (called in the cell's own process) ---


@hookspec(firstresult=True)
def harness_run_cell(cell: Any, context: Any) -> Any:
    """Run one cell and return its result dict (metrics, timings, curve).

    The runner's own implementation does the work; cross-cutting plugins wrap it with
    `@hookimpl(wrapper=True)` to seed, measure memory, or otherwise act before and after.
    `context` is a `harness.runner.CellContext` (resolved specs, suite, backend, the partial record).
    """


# --- notifications (called in the main process) ---


@hookspec
def harness_cell_finished(record: dict[str, Any]) -> None:
    """Called after a cell's record (any status) has been written to the results store."""


@hookspec
def harness_grid_finished(records: list[dict[str, Any]]) -> None:
    """Called after every cell of a `harness run` has a record, before leaderboards are written."""
