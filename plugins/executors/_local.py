"""The `local` executor's implementation: a pool of driver threads, each running one cell's process tree,
with the machine's cores (and GPUs) handed out so that running cells never share one."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

from harness.errors import UsageError
from harness.executors import (
    Cancelled,
    CancelToken,
    CellJob,
    Executor,
    ExecutorOptions,
    Placement,
    usable_cpus,
)


def cuda_devices() -> list[str]:
    """The CUDA devices this process can see ('0', '1', ...); none without a CUDA build or GPU."""
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class LocalExecutor(Executor):
    """`--workers N` cells at once (default: one per core, or one per GPU when the grid runs on CUDA).

    Each cell is pinned to as many cores of its own as its budget's `threads` (a budget that leaves
    `threads` unset gets an equal share of the cores, and as many torch threads); a cell waits until
    that many cores are free, so the machine is never oversubscribed whatever N is. A `cuda` cell also
    waits for a GPU of its own. Cells that fix `threads` (every bundled grid does) compute the same numbers
    as under `serial`: pinning changes where threads run, not what they compute.
    """

    name = "local"

    def __init__(self, options: ExecutorOptions | None = None, registry: Any = None) -> None:
        super().__init__(options, registry)
        if self.options.address:
            raise UsageError("--address is the ray executor's (a Ray cluster to join); the local executor runs "
                             "cells on this machine")
        if self.options.in_process:
            raise UsageError("--in-process runs cells inside the harness process, one at a time: use it with the "
                             "serial executor")
        self.cpus = usable_cpus()
        self.gpus: list[str] = []
        self.workers = self.options.workers or len(self.cpus)
        self._free_cpus = list(self.cpus)
        self._free_gpus: list[str] = []
        self._cond = threading.Condition()
        self._tokens: set[CancelToken] = set()
        self._running: dict[CancelToken, int] = {}  # running cell -> the most other cells that ran beside it
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def slots(self) -> int:
        return self.workers

    def start(self, jobs: list[CellJob]) -> None:
        if any(job.cell.backend == "cuda" for job in jobs):
            self.gpus = cuda_devices()
            self._free_gpus = list(self.gpus)
            if not self.options.workers and self.gpus:
                self.workers = len(self.gpus)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="harness-local")

    def cores_for(self, job: CellJob) -> int:
        """How many cores a cell gets: its budget's threads (at most the machine's), else an equal share."""
        threads = job.cell.budget.threads
        if threads is None:
            return max(1, len(self.cpus) // self.workers)
        return min(threads, len(self.cpus))

    def submit(self, job: CellJob) -> concurrent.futures.Future:
        if self._pool is None:
            raise RuntimeError("LocalExecutor.submit before start")
        token = CancelToken()
        with self._cond:
            self._tokens.add(token)
        return self._pool.submit(self._run, job, token)

    def _run(self, job: CellJob, token: CancelToken) -> dict[str, Any]:
        need = self.cores_for(job)
        wants_gpu = job.cell.backend == "cuda" and bool(self.gpus)
        cpus: list[int] = []
        gpu: str | None = None
        try:
            with self._cond:
                while not token.cancelled and (len(self._free_cpus) < need or (wants_gpu and not self._free_gpus)):
                    self._cond.wait()
                if token.cancelled:
                    raise Cancelled(job.cell.id)
                cpus, self._free_cpus = self._free_cpus[:need], self._free_cpus[need:]
                if wants_gpu:
                    gpu = self._free_gpus.pop(0)
                self._running[token] = len(self._running)
                for other in self._running:
                    self._running[other] = max(self._running[other], len(self._running) - 1)
            placement = Placement(cpus=tuple(cpus), gpus=(gpu,) if gpu is not None else None, threads=need)
            record = job.run(executor=self.name, placement=placement, cancel=token)
            with self._cond:
                beside = self._running.get(token, 0)
            if beside:  # timings measured while other cells ran: not exclusive (the session marks them)
                record["execution"]["concurrent_cells"] = beside
            return record
        finally:
            with self._cond:
                self._running.pop(token, None)
                self._free_cpus = sorted(self._free_cpus + cpus)
                if gpu is not None:
                    self._free_gpus.append(gpu)
                self._tokens.discard(token)
                self._cond.notify_all()
            token.close()

    def cancel_all(self) -> None:
        with self._cond:
            for token in list(self._tokens):
                token.cancel()
            self._cond.notify_all()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
