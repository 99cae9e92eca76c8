"""Executors: how the cells of a run reach processes, GPUs and machines (the fourth plugin kind).

The session (`harness.session`) plans the cells, claims each one before it runs, writes each record as it
comes back and calls the hooks; an executor only decides where and how many cells run at once. Every
executor keeps the same contract: one process tree per cell with its hard timeout (`CellJob.run`), one
record per cell whatever happens, and nothing left running when the run is interrupted (`cancel_all`).

- `serial` (this module's `SerialExecutor`, the default): one cell at a time in the session's own
  thread; the only mode whose timings are exclusive.
- `local` (plugins/executors/local.py): N cells at once on this machine, cores and GPUs partitioned.
- `ray` (plugins/executors/ray.py): cells as Ray tasks on a local Ray instance or an existing cluster.

A third-party executor registers an `ExecutorSpec` through `harness_register_executors` whose factory
builds an `Executor` from the run's `ExecutorOptions`.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from harness.cells import build_record, now_iso
from harness.errors import UsageError
from harness.results import capture_environment
from harness.specs import Cell, ExecutorSpec

__all__ = ["CellJob", "Cancelled", "CancelToken", "Executor", "ExecutorOptions", "ExecutorSpec", "Placement",
           "SerialExecutor", "build_executor"]

#: The executor a run uses when neither `--executor` nor the grid names one.
DEFAULT_EXECUTOR = "serial"


@dataclass(frozen=True)
class ExecutorOptions:
    """What `harness run` says about execution: `--workers`, `--address`, `--in-process`."""

    workers: int | None = None
    address: str | None = None
    in_process: bool = False


@dataclass(frozen=True)
class Placement:
    """Where on a machine a cell runs: the CPU cores its process tree is pinned to, and the GPUs it sees
    (`CUDA_VISIBLE_DEVICES`); `threads` is the torch thread count for a cell whose budget leaves it unset."""

    cpus: tuple[int, ...] = ()
    gpus: tuple[str, ...] | None = None
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.cpus:
            out["cpus"] = list(self.cpus)
        if self.gpus is not None:
            out["gpus"] = list(self.gpus)
        if self.threads is not None:
            out["threads"] = self.threads
        return out


class Cancelled(Exception):
    """The cell was stopped by `Executor.cancel_all` (an interrupted run): it has no record."""


class CancelToken:
    """A flag another thread can raise to stop a cell, which the cell's wait loop can select on."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._set = threading.Event()

    def cancel(self) -> None:
        if not self._set.is_set():
            self._set.set()
            try:
                self._write.send(b"x")
            except OSError:  # already closed: the cell is over
                pass

    @property
    def cancelled(self) -> bool:
        return self._set.is_set()

    def fileno(self) -> int:
        """Readable once cancelled (for `multiprocessing.connection.wait`)."""
        return self._read.fileno()

    def close(self) -> None:
        self._read.close()
        self._write.close()


@dataclass
class CellJob:
    """One cell to run, wherever an executor sends it: the cell, its resolved configuration
    (`harness.cells.resolve_cell`) and how to rebuild the plugin registry in another process
    (`registry.load_args`, plugin file paths absolute). Picklable."""

    cell: Cell
    resolved: dict[str, Any]
    load_args: dict[str, Any] = field(default_factory=dict)

    def run(self, *, executor: str, placement: Placement | None = None, cancel: CancelToken | None = None,
            registry: Any = None, in_process: bool = False) -> dict[str, Any]:
        """Run the cell here, in a supervised process tree of its own (hard timeout), and return its
        record (not stored). Never raises for the cell's own failures; raises `Cancelled` when `cancel`
        stopped it. `in_process` runs it in this process with `registry` (debugging: no hard timeout)."""
        started = now_iso()
        if in_process:
            from harness.runner import execute_cell

            outcome = execute_cell(self.cell, registry)
        else:
            from harness.cellprocess import run_in_process_tree

            outcome = run_in_process_tree(self.cell, self.load_args,
                                          placement=placement.to_dict() if placement else None, cancel=cancel)
        if outcome.get("status") == "cancelled":
            raise Cancelled(self.cell.id)
        if not outcome.get("environment"):
            outcome["environment"] = capture_environment()
        record = build_record(self.cell, self.resolved, outcome, mode="in-process" if in_process else "subprocess",
                              started_at=started, finished_at=now_iso())
        record["execution"]["executor"] = executor
        if placement is not None and placement.to_dict():
            record["execution"]["placement"] = placement.to_dict()
        return record


class Executor:
    """Runs cells somewhere. The session keeps up to `slots` cells submitted at once.

    `start(jobs)` is called once before the first `submit` (connect, check options: raise `UsageError`
    before any cell runs); `submit(job)` returns a `concurrent.futures.Future` whose result is the cell's
    record; `cancel_all()` stops every running cell (an interrupted run: their futures raise `Cancelled`);
    `close()` releases what `start` took. `exclusive` says whether a lone cell's timings are exclusive;
    `runs_cells_here` whether cells run on this machine from the run's fork server (not on a cluster's nodes).
    """

    name = ""
    exclusive = True
    runs_cells_here = True

    def __init__(self, options: ExecutorOptions | None = None, registry: Any = None) -> None:
        self.options = options or ExecutorOptions()
        self.registry = registry

    @property
    def slots(self) -> int:
        return 1

    def start(self, jobs: list[CellJob]) -> None:
        """Prepare to run `jobs` (all the run may submit)."""

    def submit(self, job: CellJob) -> concurrent.futures.Future:
        raise NotImplementedError

    def cancel_all(self) -> None:
        """Stop every running cell."""

    def close(self) -> None:
        """Release what `start` took."""


class SerialExecutor(Executor):
    """One cell at a time, in the session's own thread: the cell runs inside `submit`, so a Ctrl-C reaches
    it as it always has (its process tree is killed before the interrupt propagates)."""

    name = "serial"

    def __init__(self, options: ExecutorOptions | None = None, registry: Any = None) -> None:
        super().__init__(options, registry)
        if self.options.workers not in (None, 1):
            raise UsageError(f"the serial executor runs one cell at a time; --workers {self.options.workers} "
                             "needs --executor local (this machine) or ray (a cluster)")
        if self.options.address:
            raise UsageError("--address is the ray executor's (a Ray cluster to join); the serial executor "
                             "runs cells on this machine")

    def submit(self, job: CellJob) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(job.run(executor=self.name, registry=self.registry, in_process=self.options.in_process))
        return future


def build_executor(registry: Any, name: str | None, options: ExecutorOptions) -> Executor:
    """The executor `name` (default: serial) built from the run's options; UsageError for an unknown or
    unavailable one, or options it cannot honour, before any cell runs."""
    name = name or DEFAULT_EXECUTOR
    if name == DEFAULT_EXECUTOR and name not in registry.executors:  # the serial plugin blocked: the core's own
        return SerialExecutor(options, registry)
    reg = registry.executor(name)
    if not reg.available:
        raise UsageError(f"executor {name!r} is unavailable: {reg.reason}")
    executor = reg.spec.factory(options=options, registry=registry)
    if not isinstance(executor, Executor):
        raise UsageError(f"executor {name!r} (plugin {reg.plugin!r}) built a {type(executor).__name__}, "
                         "not a harness.executors.Executor")
    return executor


def usable_cpus() -> list[int]:
    """The CPU cores this process may run on (its affinity mask), in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))
