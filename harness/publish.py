"""A grid's leaderboards as a pure function of the results store: the records of the grid's cells, whichever
run (or grid) wrote them, so a filtered run never shrinks a published table.

The cells of grid G are its current expansion, plus the cells that runs of G added with filters and
overrides (`--algorithm` naming a plugin's algorithm, `--backend`, `--seeds`): a record that names G
counts when re-expanding G with that record's algorithm, suite, backend and seed gives its cell. A
cell counts with its current record (`ResultStore.current`: the newest ok record with the cell's
fingerprint, else its newest record), so a record made under another configuration or code version
never stands in for the present one. `harness run` and `harness leaderboard` both publish through
here, so they write the same tables.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import stats
from harness.cells import resolve_cell
from harness.errors import HarnessError, UsageError
from harness.grid import Grid, load_grid
from harness.leaderboard import NO_GRID, build_tables
from harness.results import ResultStore
from harness.specs import Cell, result_neutral


@dataclass
class GridRecords:
    """The records that make up one grid's tables, the grid's cells without one, and what was left out."""

    grid: Grid
    records: list[dict[str, Any]] = field(default_factory=list)
    pending: list[Cell] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _cells(grid: Grid) -> dict[str, Cell]:
    return {cell.id: cell for cell in [*grid.cells, *(s.cell for s in grid.skipped)]}


def grid_records(source: str, registry: Any, store: ResultStore,
                 by_cell: dict[str, list[dict[str, Any]]] | None = None) -> GridRecords:
    """The current record of every cell of grid `source` (a registered name or a TOML path) in `store`.

    `by_cell` (every record of the store by cell id, oldest first) spares reading the store again when
    several grids are published from it.
    """
    if by_cell is None:
        by_cell = records_by_cell(store)
    grid = load_grid(source, registry, runnable_only=False)
    out = GridRecords(grid)
    cells = _cells(grid)
    expansion = set(cells)
    extra, unknown = set(), set()
    for cell_id, records in by_cell.items():
        if cell_id in cells:
            continue
        for record in records:
            cell = record["cell"]
            if cell.get("grid") == grid.name:
                extra.add((cell["algorithm"], cell["suite"], cell["backend"], cell["seed"]))
    for algorithm, suite, backend, seed in sorted(extra, key=str):
        try:
            added = load_grid(source, registry, algorithms=[algorithm], suites=[suite], backends=[backend],
                              seeds=[seed], runnable_only=False)
        except HarnessError:  # its plugin is not loaded here, or the grid no longer admits it
            unknown.add(algorithm if algorithm not in registry.algorithms else suite)
            continue
        for cell_id, cell in _cells(added).items():
            cells.setdefault(cell_id, cell)
    if unknown:
        out.warnings.append(f"records of grid {grid.name!r} name {', '.join(sorted(unknown))}, which no "
                            "loaded plugin provides; load their plugins with -p to include them")
    for cell_id, cell in cells.items():
        try:
            fingerprint = resolve_cell(cell, registry)["fingerprint"]
        except HarnessError:
            continue
        current = store.current(cell_id, fingerprint, by_cell.get(cell_id, []))
        if current is not None:
            # This grid's view of the cell: its name, its reported value.
            out.records.append({**current, "cell": cell.to_dict()})
        elif cell_id in expansion:
            out.pending.append(cell)
    return out


def records_by_cell(store: ResultStore) -> dict[str, list[dict[str, Any]]]:
    """Every readable record of `store` by cell id, oldest first."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in store.iter_records():
        grouped[record["cell_id"]].append(record)
    return dict(grouped)


def _kept_grids(store: ResultStore, registry: Any, warnings: list[str]) -> dict[str, str]:
    """{grid name: path} of the grid definitions kept in `store` that expand here."""
    kept = {}
    for path in store.saved_grids():
        try:
            kept[load_grid(str(path), registry, runnable_only=False).name] = str(path)
        except HarnessError as exc:
            warnings.append(f"the kept grid definition {path} cannot be expanded here: {exc}")
    return kept


def neutral_hparams(registry: Any) -> dict[str, frozenset[str]]:
    """{algorithm: names of its result-neutral hyper-parameters} for the registered algorithms; leaderboards
    leave those out of row labels (an algorithm that is not registered here has none)."""
    return {name: result_neutral(reg.spec.hparams) for name, reg in registry.algorithms.items()}


def grid_tables(sources: list[str], registry: Any, store: ResultStore, *, alpha: float = stats.ALPHA,
                test: str = stats.PRIMARY_TEST) -> tuple[dict[tuple[str, str], pd.DataFrame], list[str]]:
    """The tables of each grid in `sources` (names or paths), and warnings to show.

    With no `sources`: every grid the store's records name, and every grid the store keeps a definition
    of (`ResultStore.save_grid`), each through its current expansion: a registered grid's from the
    registry, another's from the kept definition. A grid known neither way gets the records that name
    it, with a warning. Ranks tie at `alpha` on `test` ("t" or "wilcoxon"; `harness.stats`); labels leave
    out the registered algorithms' result-neutral hyper-parameters.
    """
    try:  # a bad option is reported before any record is read
        stats.check_test(test, alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = {"neutral": neutral_hparams(registry), "alpha": alpha, "test": test}
    by_cell = records_by_cell(store)
    warnings: list[str] = []
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    explicit = bool(sources)
    unknown = [s for s in sources if s not in registry.grids and not Path(s).is_file()]
    kept = _kept_grids(store, registry, warnings) if unknown or not sources else {}
    if sources:  # a name that is neither registered nor a file may be a grid kept in the store
        sources = [kept.get(s, s) if s in unknown else s for s in sources]
    else:
        named = {r["cell"].get("grid") or NO_GRID for records in by_cell.values() for r in records}
        sources = [name if name in registry.grids else kept[name]
                   for name in sorted(named | set(kept)) if name in registry.grids or name in kept]
        loose = sorted(name for name in named if name not in registry.grids and name not in kept)
        if loose:
            warnings.append(f"grid(s) {', '.join(loose)} have no definition here: their tables group the "
                            "records that name them; give --grid PATH.toml for a grid's exact tables")
            tables = build_tables((r for records in by_cell.values() for r in records
                                   if (r["cell"].get("grid") or NO_GRID) in loose), **options)
    for source in sources:
        try:
            found = grid_records(source, registry, store, by_cell)
        except HarnessError as exc:
            if explicit:  # the user named it: a bad name or file is an error
                raise
            warnings.append(f"grid {source} cannot be expanded here ({exc}); its tables are not written")
            continue
        warnings.extend(found.warnings)
        pending = [cell.to_dict() for cell in found.pending]
        tables.update(build_tables(found.records, pending=pending, **options))
    return tables, warnings
