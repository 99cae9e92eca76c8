"""Runs an expanded grid against the results store: resume, progress display, one record per cell."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from harness.grid import Grid
from harness.results import ResultStore
from harness.runner import FAILED_STATUSES, resolve_cell, run_one, skipped_record
from harness.specs import Cell


@dataclass
class PlannedCell:
    """A cell with its resolved config and the completed record that lets a re-run skip it."""

    cell: Cell
    resolved: dict[str, Any]
    completed: dict[str, Any] | None


@dataclass
class GridRun:
    """What a `harness run` did: the grid's latest records, and counts by status."""

    records: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0
    reused: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] in FAILED_STATUSES]


def plan(grid: Grid, registry: Any, store: ResultStore, *, force: bool = False) -> list[PlannedCell]:
    """Resolve every cell up front (bad hyper-parameters fail here, before any cell runs)."""
    planned = []
    for cell in grid.cells:
        resolved = resolve_cell(cell, registry)
        completed = None if force else store.find_completed(cell.id, resolved["fingerprint"])
        planned.append(PlannedCell(cell, resolved, completed))
    return planned


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
) -> GridRun:
    """Run every cell of `grid` that lacks a completed record (all of them with `force`).

    Each finished cell's record is written before the next cell starts, so an interrupted grid
    keeps what it did. Skipped and unavailable cells get a record saying why.
    """
    stream = stream if stream is not None else sys.stderr
    planned = plan(grid, registry, store, force=force)
    outcome = GridRun()
    for skipped in grid.skipped:
        latest = store.latest(skipped.cell.id)
        if latest is None or (latest["status"], latest["reason"]) != (skipped.status, skipped.reason):
            latest = skipped_record(skipped.cell, registry, skipped.status, skipped.reason)
            store.write(latest)
        outcome.records.append(latest)
    todo = [p for p in planned if p.completed is None]
    outcome.reused = len(planned) - len(todo)
    outcome.records.extend(p.completed for p in planned if p.completed is not None)
    show = _Progress(len(todo), stream, progress)
    for index, item in enumerate(todo):
        show.start(index, item.cell)
        record = run_one(item.cell, registry, in_process=in_process, resolved=item.resolved, exclusive=exclusive)
        store.write(record)
        registry.hook.harness_cell_finished(record=record)
        outcome.records.append(record)
        outcome.ran += 1
        show.done(index, item.cell, record)
    show.close()
    registry.hook.harness_grid_finished(records=outcome.records)
    return outcome


class _Progress:
    """A tqdm bar on a terminal (cell i/n, ETA, current cell); one line per cell in logs."""

    def __init__(self, total: int, stream: TextIO, enabled: bool | None) -> None:
        self.total, self.stream, self.started = total, stream, time.perf_counter()
        interactive = stream.isatty() if enabled is None else enabled
        self.bar: Any = None
        if interactive and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cell", file=stream, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} cells [{elapsed}<{remaining}]{postfix}")

    def start(self, index: int, cell: Cell) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"cell {index + 1}/{self.total}")
            self.bar.set_postfix_str(cell.id)
        else:
            print(f"[{index + 1}/{self.total}] {cell.id} ...", file=self.stream, flush=True)

    def done(self, index: int, cell: Cell, record: dict[str, Any]) -> None:
        status = record["status"] + (f" ({record['reason']})" if record["reason"] else "")
        if self.bar is not None:
            self.bar.update(1)
            if record["status"] != "ok":
                self.bar.write(f"{cell.id}: {status}")
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / (index + 1) * (self.total - index - 1)
        metric = record.get("metric") or {}
        value = f" {metric['name']}={metric['mean']:.4g}" if metric else ""
        print(f"[{index + 1}/{self.total}] {cell.id}: {status}{value}  elapsed {_fmt_s(elapsed)}, ETA {_fmt_s(eta)}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt_s(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


