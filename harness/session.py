"""Runs an expanded grid against the results store: resume, claims shared with concurrent runs, progress.

Every cell that lacks a completed record is claimed before it runs (`harness.claims`), so runs that
share a results folder split the cells between them; a cell another live run holds is left to it and
waited for at the end, and a cell whose claimant died is taken over. Each finished cell's record is
written before the next cell starts, so an interrupted run keeps everything it finished.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness import interrupts
from harness.cellprocess import STOP_GRACE_S, join_supervisors, lazy_imports, start_fork_server
from harness.cells import (
    FAILED_STATUSES,
    absolute_load_args,
    build_record,
    now_iso,
    resolve_cell,
    skipped_record,
)
from harness.claims import Claim, ClaimBook
from harness.errors import HarnessError
from harness.executors import Cancelled, CellJob, Executor, ExecutorOptions, SerialExecutor
from harness.files import remove_stale_temp_files
from harness.grid import Grid
from harness.machine import MachineRuns
from harness.results import ResultStore
from harness.specs import Cell

#: How often a run looks at the machine's other runs (seconds), and how often it waits for others' cells.
WATCH_INTERVAL_S = 0.5


@dataclass
class PlannedCell:
    """A cell with its resolved config, the completed record that lets a re-run skip it, and the record
    files it had when planned (a record that appears later was written by a concurrent run)."""

    cell: Cell
    resolved: dict[str, Any]
    completed: dict[str, Any] | None
    known: frozenset[Path] = frozenset()


@dataclass
class GridRun:
    """What a `harness run` did: the grid's latest records, and counts by status."""

    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0
    by_others: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] in FAILED_STATUSES]


def plan(grid: Grid, registry: Any, store: ResultStore, *, force: bool = False) -> list[PlannedCell]:
    """Resolve every cell up front (bad hyper-parameters fail here, before any cell runs)."""
    planned = []
    for cell in grid.cells:
        resolved = resolve_cell(cell, registry)
        entries = store.entries(cell.id)
        completed = None if force else store.current(cell.id, resolved["fingerprint"], [r for _, r in entries])
        planned.append(PlannedCell(cell, resolved, completed if completed and completed["status"] == "ok" else None,
                                   frozenset(path for path, _ in entries)))
    return planned


class _Watch:
    """A background thread that renews this run's claims and counts the machine's other harness runs
    (for each running cell, the most seen since it started)."""

    def __init__(self, claims: ClaimBook, machine: MachineRuns, stream: TextIO) -> None:
        self.claims, self.machine, self.stream = claims, machine, stream
        self.lock = threading.Lock()
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def begin_cell(self, cell_id: str) -> None:
        others = self.machine.others()
        with self.lock:
            self.peaks[cell_id] = others

    def shared_with(self, cell_id: str) -> int:
        """The most other runs seen on the machine since `begin_cell(cell_id)` (looking once more now)."""
        others = self.machine.others()
        with self.lock:
            return max(self.peaks.pop(cell_id, 0), others)

    def _loop(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.wait(WATCH_INTERVAL_S):
            others = self.machine.others()
            with self.lock:
                for cell_id, peak in self.peaks.items():
                    self.peaks[cell_id] = max(peak, others)
            if time.monotonic() - last_refresh < self.claims.lease_s / 4:
                continue
            last_refresh = time.monotonic()
            for cell_id in self.claims.refresh():
                _say(self.stream, f"harness: warning: the claim on {cell_id} was taken over by another run; "
                     "both will record the cell")


def run_grid(
    grid: Grid,
    registry: Any,
    store: ResultStore,
    *,
    force: bool = False,
    in_process: bool = False,
    stream: TextIO | None = None,
    progress: bool | None = None,
    exclusive: bool = True,
    executor: Executor | None = None,
    keep_grid: tuple[str, str] | None = None,
) -> GridRun:
    """Run every cell of `grid` that lacks a completed record (all of them with `force`).

    Cells are claimed before they run and records written as each finishes; cells other runs hold
    are waited for. `executor` decides where cells run (default: serial, one at a time here);
    `keep_grid` (name, TOML text) is saved in the store once the executor has started.
    `exclusive` False (other work shares the machine) marks every record not exclusive; so does any
    other harness run seen on this machine while a cell ran, and any other cell of this run.
    """
    stream = stream if stream is not None else sys.stderr
    executor = executor or SerialExecutor(ExecutorOptions(in_process=in_process), registry)
    if executor.runs_cells_here and not executor.options.in_process and grid.cells:
        start_fork_server(lazy_imports(grid.cells, registry))  # it imports torch while the cells are planned
    planned = plan(grid, registry, store, force=force)
    load_args = absolute_load_args(registry.load_args)
    # Connect to a cluster, check options: a refusal comes before anything is written.
    executor.start([CellJob(p.cell, p.resolved, load_args) for p in planned if p.completed is None])
    if keep_grid is not None:
        store.save_grid(*keep_grid)
    remove_stale_temp_files([store.root])
    outcome = GridRun()
    _record_skipped(grid, registry, store, outcome)
    todo = [p for p in planned if p.completed is None]
    outcome.reused = len(planned) - len(todo)
    outcome.records.extend(p.completed for p in planned if p.completed is not None)
    rerun = {problem: item.cell.id for item in todo for problem in store.problems_in(item.cell.id)}
    for problem in store.problems:
        again = f"; re-running its cell {rerun[problem]}" if problem in rerun else ""
        _say(stream, f"harness: warning: {problem}{again}")
    claims = ClaimBook(store, secrets.token_hex(8))
    claims.sweep([cell.id for cell in grid.cells])
    show = _Progress(len(todo), stream, progress)
    machine = MachineRuns({"results": str(store.root), "grid": grid.name})
    run = _Dispatch(executor, registry, store, claims, show, outcome, exclusive, load_args)
    try:
        with machine, _Watch(claims, machine, stream) as watch:
            run.watch = watch
            waiting = run.run(todo)
            if waiting:
                holders = sorted({h.describe() for h in map(claims.holder, (w.cell.id for w in waiting)) if h})
                _say(stream, f"harness: waiting for {len(waiting)} cell(s) that other runs on this results folder "
                     f"are running ({', '.join(holders) or 'finishing'})")
            while waiting:
                time.sleep(WATCH_INTERVAL_S)
                waiting = run.run(waiting)
    except BaseException:
        executor.cancel_all()
        raise
    finally:
        run.drain()
        claims.release_all()
        executor.close()
        join_supervisors()
        show.close()
    registry.hook.harness_grid_finished(records=outcome.records)
    return outcome


class _Dispatch:
    """Keeps the executor's slots full: claims a cell, submits it, writes its record when it is back."""

    def __init__(self, executor: Executor, registry: Any, store: ResultStore, claims: ClaimBook, show: _Progress,
                 outcome: GridRun, exclusive: bool, load_args: dict[str, Any]) -> None:
        self.executor, self.registry, self.store, self.claims = executor, registry, store, claims
        self.show, self.outcome, self.exclusive, self.load_args = show, outcome, exclusive, load_args
        self.watch: _Watch | None = None
        self.running: dict[concurrent.futures.Future, PlannedCell] = {}

    def run(self, items: list[PlannedCell]) -> list[PlannedCell]:
        """Run each of `items` this run can claim, take the records other runs wrote; return those still busy."""
        busy = []
        queue = list(items)
        while queue or self.running:
            interrupts.checkpoint()
            while queue and len(self.running) < max(1, self.executor.slots):
                item = queue.pop(0)
                if not self._submit(item):
                    busy.append(item)
            if self.running:
                self._collect(timeout=WATCH_INTERVAL_S)
        return busy

    def _submit(self, item: PlannedCell) -> bool:
        """Claim and submit `item` (True), or take another run's record of it (True), or leave it (False)."""
        if _adopt(item, self.store, self.show, self.outcome):
            return True
        claim = self.claims.try_claim(item.cell.id)
        if not isinstance(claim, Claim):
            return False
        if _adopt(item, self.store, self.show, self.outcome):  # finished by another run between look and claim
            self.claims.release(item.cell.id)
            return True
        self.show.start(item.cell)
        assert self.watch is not None
        self.watch.begin_cell(item.cell.id)
        try:
            future = self.executor.submit(CellJob(item.cell, item.resolved, self.load_args))
        except BaseException:
            self.claims.release(item.cell.id)
            raise
        self.running[future] = item
        return True

    def _collect(self, timeout: float) -> None:
        done, _ = concurrent.futures.wait(list(self.running), timeout=timeout,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
            item = self.running.pop(future)
            try:
                record = future.result()
            except Cancelled:
                self.claims.release(item.cell.id)
                continue
            except Exception as exc:  # the executor itself failed (not the cell): still a record with a status
                record = _executor_failure(item, self.executor, exc)
            assert self.watch is not None
            others = self.watch.shared_with(item.cell.id)
            execution = record.setdefault("execution", {})
            # Exclusive only when nothing else ran: no other harness run on the machine, no other cell of this
            # run beside it (the executor counts those: `concurrent_cells`), and an executor that can tell.
            alone = (self.exclusive and self.executor.exclusive and others == 0
                     and not execution.get("concurrent_cells") and execution.get("exclusive", True))
            execution.update(exclusive=alone, shared_with=others)
            try:
                _write(self.store, record)
            finally:
                self.claims.release(item.cell.id)
            self.registry.hook.harness_cell_finished(record=record)
            self.outcome.records.append(record)
            self.outcome.ran += 1
            self.show.done(item.cell, record)

    def drain(self) -> None:
        """After an interrupt: wait for the cancelled cells to stop (they write no record)."""
        if self.running:
            concurrent.futures.wait(list(self.running), timeout=STOP_GRACE_S * 2)
        for item in self.running.values():
            self.claims.release(item.cell.id)
        self.running.clear()


def _executor_failure(item: PlannedCell, executor: Executor, exc: BaseException) -> dict[str, Any]:
    """The record of a cell whose executor failed to run it (a lost worker, a cluster error)."""
    now = now_iso()
    outcome = {"status": "failed", "reason": f"executor {executor.name!r} failed to run the cell: "
               f"{type(exc).__name__}: {exc}", "environment": {}}
    record = build_record(item.cell, item.resolved, outcome, mode="none", started_at=now, finished_at=now)
    record["execution"]["executor"] = executor.name
    return record


def _write(store: ResultStore, record: dict[str, Any]) -> None:
    try:
        store.write(record)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: stop, keeping what is written
        raise HarnessError(f"cannot write the record of {record['cell_id']} under {store.root}: "
                           f"{exc.strerror or exc}; the records written before it are kept") from None


def _adopt(item: PlannedCell, store: ResultStore, show: _Progress, outcome: GridRun) -> bool:
    """Take the record of this cell and fingerprint that appeared after planning (a concurrent run's), if any."""
    fresh = [record for path, record in store.entries(item.cell.id) if path not in item.known]
    done = store.current(item.cell.id, item.resolved["fingerprint"], fresh)
    if done is None:
        return False
    outcome.records.append(done)
    outcome.by_others += 1
    show.done(item.cell, done, by_other=True)
    return True


def _record_skipped(grid: Grid, registry: Any, store: ResultStore, outcome: GridRun) -> None:
    """A record for each cell that cannot run here, unless it has one saying the same (or an ok one)."""
    for skipped in grid.skipped:
        latest = store.latest(skipped.cell.id)
        if latest is None or (latest["status"], latest.get("reason")) != (skipped.status, skipped.reason):
            record = skipped_record(skipped.cell, registry, skipped.status, skipped.reason)
            done = store.find_completed(skipped.cell.id, record["fingerprint"]) if record["fingerprint"] else None
            if done is None:
                _write(store, record)
            latest = done or record
        outcome.records.append(latest)


def _say(stream: TextIO, line: str) -> None:
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):  # the terminal is gone (hang-up): nothing to tell
        pass


class _Progress:
    """A tqdm bar on a terminal (cell i/n, ETA, current cell); one line per cell in logs."""

    def __init__(self, total: int, stream: TextIO, enabled: bool | None) -> None:
        self.total, self.stream, self.started = total, stream, time.perf_counter()
        self.index = 0
        self.begun = 0  # cells started (several run at once under a concurrent executor)
        interactive = stream.isatty() if enabled is None else enabled
        self.bar: Any = None
        if interactive and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} cells [{elapsed}<{remaining}]{postfix}")

    def start(self, cell: Cell) -> None:
        self.begun += 1
        if self.bar is not None:
            self.bar.set_description_str(f"cell {self.begun}/{self.total}")
            self.bar.set_postfix_str(cell.id)
        else:
            _say(self.stream, f"[{self.begun}/{self.total}] {cell.id} ...")

    def done(self, cell: Cell, record: dict[str, Any], by_other: bool = False) -> None:
        self.index += 1
        status = record["status"] + (f" ({record['reason']})" if record.get("reason") else "")
        status += " (run by another harness process)" if by_other else ""
        if self.bar is not None:
            self.bar.update(1)
            if record["status"] != "ok" or by_other:
                self.bar.write(f"{cell.id}: {status}")
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.index * (self.total - self.index)
        metric = record.get("metric") or {}
        value = f" {metric['name']}={metric['mean']:.4g}" if metric.get("mean") is not None else ""
        _say(self.stream, f"[{self.index}/{self.total}] {cell.id}: {status}{value}  elapsed {_fmt_s(elapsed)}, "
             f"ETA {_fmt_s(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_s(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
