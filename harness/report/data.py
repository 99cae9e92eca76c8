"""What the HTML report shows, gathered from a results store: each grid's leaderboards (exactly the frames
`harness leaderboard` writes, from `harness.publish.grid_tables`) and, beside each table row, the records
it was built from, so the report can plot curves and link every row to its cells' pages."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.grid import load_grid
from harness.leaderboard import NO_GRID
from harness.publish import grid_records, grid_tables, records_by_cell
from harness.results import ResultStore, record_time
from harness.specs import format_params

#: `name[k=v,k2=(1,2)]`: a row label; a comma starts a new pair only when `key=` follows it.
_LABEL = re.compile(r"^(?P<name>[^\[\]]+?)(?:\[(?P<params>.*)\])?$")
_PAIR_SPLIT = re.compile(r",(?=[A-Za-z_][A-Za-z0-9_]*=)")


@dataclass
class Table:
    """One leaderboard: its frame (`build_tables` columns and attrs) and the records behind each row."""

    grid: str
    suite: str
    frame: pd.DataFrame
    #: rows[i]: the ok records (one per seed) that made row i of `frame`; empty when none matched.
    rows: list[list[dict[str, Any]]] = field(default_factory=list)


@dataclass
class GridInfo:
    """One grid of the report: its description, its tables and the current record of each of its cells."""

    name: str
    description: str = ""
    tables: list[Table] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    pending: int = 0


@dataclass
class ReportData:
    """Everything a report shows, and the warnings to print and show on its index."""

    grids: dict[str, GridInfo]
    warnings: list[str]
    n_records: int


def parse_label(label: str) -> tuple[str, dict[str, str]]:
    """`maml[inner_lr=0.4,shape=(1,2)]` -> (`maml`, {inner_lr: `0.4`, shape: `(1,2)`}); a label that is
    not of that form is all name."""
    match = _LABEL.match(label.strip())
    if match is None:
        return label, {}
    params = match["params"] or ""
    pairs = [p.split("=", 1) for p in _PAIR_SPLIT.split(params) if "=" in p]
    return match["name"], {k: v for k, v in pairs}


def _formatted(key: str, value: Any) -> str:
    """A value as `format_params` prints it in a label (`0.4`, `(1,2)`, `False`)."""
    return format_params({key: value})[len(key) + 2 : -1]


def _matches(record: Mapping[str, Any], name: str, params: Mapping[str, str], backend: str) -> bool:
    cell = record.get("cell") or {}
    if str(cell.get("algorithm")) != name or str(cell.get("backend")) != backend:
        return False
    resolved = ((record.get("config") or {}).get("algorithm") or {}).get("hparams") or {}
    values = {**resolved, **(cell.get("hparams") or {})}
    return all(key in values and _formatted(key, values[key]) == text for key, text in params.items())


def match_rows(frame: pd.DataFrame, records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The ok records of each row of `frame`, matched on the row's algorithm label and backend.

    A label may show only some hyper-parameters (those that differ between rows), so a record belongs to
    the row whose shown values it has, the most specific such row when several fit.
    """
    rows: list[list[dict[str, Any]]] = [[] for _ in range(len(frame))]
    if not len(frame) or "algorithm" not in frame or "backend" not in frame:
        return rows
    parsed = [
        (parse_label(str(a)), str(b)) for a, b in zip(frame["algorithm"], frame["backend"], strict=True)
    ]
    for record in records:
        if record.get("status") != "ok":
            continue
        fits = [
            i for i, ((name, params), backend) in enumerate(parsed) if _matches(record, name, params, backend)
        ]
        if fits:
            rows[max(fits, key=lambda i: (len(parsed[i][0][1]), -i))].append(record)
    for found in rows:
        found.sort(key=lambda r: ((r.get("cell") or {}).get("seed", 0), r.get("cell_id", "")))
    return rows


def _suite_label(record: Mapping[str, Any]) -> str:
    cell = record.get("cell") or {}
    return str(cell.get("suite", "?")) + format_params(cell.get("suite_config") or {})


def _sources(explicit: list[str], registry: Any, store: ResultStore) -> dict[str, str]:
    """{grid name: source to expand it from}: the grids given (names or files), the registered ones, and
    the definitions the store keeps, in that order of precedence (as `grid_tables` chooses them)."""
    found: dict[str, str] = {}
    for path in store.saved_grids():
        try:
            found[load_grid(str(path), registry, runnable_only=False).name] = str(path)
        except HarnessError:  # grid_tables has already warned about it
            continue
    found.update({name: name for name in registry.grids})
    for source in explicit:
        if source in registry.grids:
            found[source] = source
        elif Path(source).is_file():
            found[load_grid(source, registry, runnable_only=False).name] = source
    return found


def _latest_per_cell(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=record_time):
        latest[str(record.get("cell_id"))] = record
    return list(latest.values())


def gather(sources: list[str], registry: Any, store: ResultStore, **statistics: Any) -> ReportData:
    """The grids, tables and records of the report of `store` (the grids `sources` names, else all);
    `statistics` (`alpha`, `test`) go to `grid_tables`, as `harness leaderboard` passes its options."""
    tables, warnings = grid_tables(sources, registry, store, **statistics)
    by_cell = records_by_cell(store)
    where = _sources(sources, registry, store)
    grids: dict[str, GridInfo] = {}
    for grid_name in sorted({grid for grid, _ in tables}):
        info = grids[grid_name] = GridInfo(grid_name)
        source = where.get(grid_name)
        if source is not None:
            try:
                found = grid_records(source, registry, store, by_cell)
                info.description, info.records, info.pending = (
                    found.grid.description,
                    found.records,
                    len(found.pending),
                )
            except HarnessError:
                source = None
        if source is None:  # a grid known only by the records naming it, as grid_tables groups them
            info.records = _latest_per_cell(
                [
                    r
                    for records in by_cell.values()
                    for r in records
                    if ((r.get("cell") or {}).get("grid") or NO_GRID) == grid_name
                ]
            )
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for info in grids.values():
        for record in info.records:
            by_table[(info.name, _suite_label(record))].append(record)
    for (grid, suite), frame in sorted(tables.items()):
        grids[grid].tables.append(Table(grid, suite, frame, match_rows(frame, by_table[(grid, suite)])))
    for info in grids.values():
        info.records.sort(key=lambda r: str(r.get("cell_id")))
    return ReportData(grids, [*store.problems, *warnings], sum(len(v) for v in by_cell.values()))
