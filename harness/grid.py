"""TOML grid files -> validated, expanded cells with deterministic ids, and the skipped pairs with reasons.

A grid is a union of blocks. Top-level keys give defaults for every block:

    name = "smoke"
    description = "..."
    seeds = [0, 1]             # or an integer N meaning seeds 0..N-1
    backends = ["auto"]        # backend names, or "auto" for the best available
    [budget]                   # harness.specs.Budget fields
    iterations = 200

    [[block]]
    algorithms = ["maml", { name = "reptile", inner_lr = [0.01, 0.02] }]   # "*" = every algorithm
    suites = [{ name = "sinusoid", shots = [5, 10] }]                      # "*" = every suite
    budget = { iterations = 500 }   # optional; also seeds, backends

A list value sweeps a parameter (cartesian product); a parameter that itself takes a list is swept
with a list of lists. Published numbers for a "reported" column in the leaderboards:

    [[reported]]
    algorithm = "maml"
    suite = "sinusoid"
    value = "0.67 / 0.38 / 0.35"
    config = { shots = 10 }   # optional: only cells whose suite configuration has these values

A cell gets the value of the most specific entry (most `config` keys) that matches it.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import GridError, UsageError, unknown_name
from harness.specs import Budget, Cell, is_sequence_field, params_dict, resolve_params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"name", "description", "seeds", "backends", "budget", "block", "reported"}
BLOCK_KEYS = {"algorithms", "suites", "seeds", "backends", "budget", "name"}


@dataclass
class Skipped:
    """A cell that will not run, with why: status `skipped` (impossible pair) or `unavailable`."""

    cell: Cell
    status: str
    reason: str


@dataclass
class Grid:
    """An expanded grid: the cells to run and those skipped with a reason."""

    name: str
    description: str
    source: str
    cells: list[Cell] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class _Where:
    """Points errors at file:line for a key."""

    path: str
    text: str

    def line(self, key: str, after: int = 0) -> int:
        lines = self.text.splitlines()
        pattern = re.compile(rf'(^|[\s{{,])"?{re.escape(key)}"?\s*=|\[\[?\s*{re.escape(key)}\s*\]')
        for number, line in enumerate(lines[after:], start=after + 1):
            if pattern.search(line.split("#", 1)[0]):
                return number
        return 0

    def error(self, key: str, message: str, after: int = 0) -> GridError:
        line = self.line(key, after)
        loc = f"{self.path}:{line}" if line else self.path
        return GridError(f"{loc}: key {key!r}: {message}")


def read_grid_file(path: Path) -> tuple[dict[str, Any], _Where]:
    """Parse a TOML grid file; syntax errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read grid file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if match:
            line = int(match.group(1))
        else:  # "at end of document": the construct left open runs to the last line
            line = max(1, len(text.splitlines()))
        raise GridError(f"{path}:{line}: malformed TOML: {message}") from None
    return data, _Where(str(path), text)


def resolve_grid_source(name_or_path: str, registry: Any) -> Path:
    """A registered grid name (smoke, default, full, ...) or a path to a .toml file."""
    candidate = Path(name_or_path)
    if name_or_path.endswith(".toml") or candidate.is_file():
        if not candidate.is_file():
            raise UsageError(f"grid file {name_or_path} does not exist")
        return candidate
    if name_or_path not in registry.grids:
        raise unknown_name("grid", name_or_path, registry.grids)
    return registry.grid_path(name_or_path)


def load_grid(
    name_or_path: str,
    registry: Any,
    *,
    algorithms: Sequence[str] = (),
    suites: Sequence[str] = (),
    backends: Sequence[str] = (),
    seeds: int | None = None,
) -> Grid:
    """Read, validate and expand a grid, applying the CLI's filters and overrides.

    Every name and parameter is checked before anything runs; errors carry file:line and key.
    `algorithms`/`suites` keep only cells of those names, and add a name a block does not mention
    with default parameters (a new plugin runs on the grid's suites); `backends` replaces the grid's backends;
    `seeds` replaces its seeds with 0..seeds-1.
    """
    for name in algorithms:
        registry.algorithm(name)
    for name in suites:
        registry.suite(name)
    for name in backends:
        registry.backend(name)
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise UsageError(f"--seeds must be a positive integer, got {seeds!r}")
    path = resolve_grid_source(name_or_path, registry)
    data, where = read_grid_file(path)
    _check_keys(data, TOP_KEYS, where, "the top level")
    grid = Grid(name=str(data.get("name", path.stem)), description=str(data.get("description", "")), source=str(path))
    blocks = data.get("block", [])
    if not isinstance(blocks, list) or not blocks:
        raise where.error("block", "a grid needs at least one [[block]] with algorithms and suites")
    reported = _reported(data.get("reported", []), where, registry)
    seen: dict[str, tuple[int, Cell]] = {}
    block_line = 0
    for index, block in enumerate(blocks, start=1):
        block_line = where.line("block", block_line) or block_line
        _check_keys(block, BLOCK_KEYS, where, f"[[block]] {index}", block_line)
        merged_budget = {**_table(data, "budget", where), **_table(block, "budget", where, block_line)}
        try:
            budget = Budget(**merged_budget)
        except TypeError as exc:
            bad = sorted(set(merged_budget) - {f.name for f in dataclasses.fields(Budget)})
            valid = ", ".join(f.name for f in dataclasses.fields(Budget))
            raise where.error(bad[0] if bad else "budget", f"unknown budget key; valid keys: {valid}") from exc
        except ValueError as exc:
            raise where.error("budget", str(exc), block_line) from None
        block_seeds = _seeds(block.get("seeds", data.get("seeds", [0])), where) if seeds is None else list(range(seeds))
        block_backends = list(backends) or _strings(block.get("backends", data.get("backends", ["auto"])), "backends", where)
        algo_entries = _select(_entries(block.get("algorithms"), "algorithms", where, block_line, registry.algorithms),
                               algorithms)
        suite_entries = _select(_entries(block.get("suites"), "suites", where, block_line, registry.suites), suites)
        added = {name for name, params in algo_entries + suite_entries if params is _ADDED}
        for name in block_backends:
            try:
                registry.backend(name)
            except UsageError as exc:
                raise where.error("backends", str(exc), block_line) from None
        suite_cfgs = [
            (name, cfg) for name, params in suite_entries
            for cfg in _expand(params, registry.suite(name).spec.config, f"suite {name!r}", where, block_line)
        ]
        algo_cfgs = [
            (name, cfg) for name, params in algo_entries
            for cfg in _expand(params, registry.algorithm(name).spec.hparams, f"algorithm {name!r}", where, block_line)
        ]
        unrunnable = {}
        for s_name, s_cfg in suite_cfgs:
            reason = _suite_check(registry.suite(s_name), s_cfg)
            if reason and block.get("suites") not in ("*", ["*"]):
                raise where.error("suites", f"suite {s_name!r} cannot run here: {reason}", block_line)
            unrunnable[(s_name, repr(sorted(s_cfg.items())))] = reason
        wildcard = block.get("algorithms") in ("*", ["*"])
        for (s_name, s_cfg), (a_name, a_cfg), backend, seed in itertools.product(
            suite_cfgs, algo_cfgs, block_backends, block_seeds
        ):
            b_reg = registry.backend(backend)
            cell = Cell(a_name, tuple(sorted(a_cfg.items())), s_name, tuple(sorted(s_cfg.items())),
                        b_reg.spec.name, seed, budget, grid.name, _reported_for(reported, a_name, s_name, s_cfg, registry))
            if cell.id in seen:
                first_index, first = seen[cell.id]
                if first.budget != budget and not ({a_name, s_name} & added):
                    raise where.error("budget", f"cell {cell.id} appears in blocks {first_index} and {index} "
                                      "with different budgets; a cell must have one budget", block_line)
                continue
            seen[cell.id] = (index, cell)
            a_reg, s_reg = registry.algorithm(a_name), registry.suite(s_name)
            kind = s_reg.spec.task_kind
            if kind not in a_reg.spec.task_kinds:
                if not wildcard:
                    grid.skipped.append(Skipped(cell, "skipped", f"algorithm {a_name!r} supports "
                                        f"{'/'.join(sorted(a_reg.spec.task_kinds))} tasks; suite {s_name!r} is {kind}"))
                continue
            for reg, what in ((b_reg, "backend"), (a_reg, "algorithm"), (s_reg, "suite")):
                if not reg.available:
                    grid.skipped.append(Skipped(cell, "unavailable", f"{what} {reg.spec.name!r} unavailable: {reg.reason}"))
                    break
            else:
                reason = unrunnable[(s_name, repr(sorted(s_cfg.items())))]
                if reason:
                    grid.skipped.append(Skipped(cell, "unavailable", f"suite {s_name!r}: {reason}"))
                else:
                    grid.cells.append(cell)
    return grid


def _suite_check(reg: Any, overrides: dict[str, Any]) -> str:
    """The suite's own "can this configuration run here" check ('' when it can, or has none)."""
    if reg.spec.check is None or not reg.available:
        return ""
    return reg.spec.check(resolve_params(reg.spec.config, overrides, f"suite {reg.spec.name!r}"))


#: Marks an entry that a CLI filter added to a block that did not name it (run with defaults).
_ADDED: dict[str, Any] = {}


def _select(entries: list[tuple[str, dict]], wanted: Sequence[str]) -> list[tuple[str, dict]]:
    """Apply a `--algorithm`/`--suite` filter to a block's entries.

    Entries the block names are kept (with their parameters); a wanted name the block does not
    mention is added with default parameters, so `--algorithm my-algo` runs a new plugin's algorithm
    on the grid's suites and budgets.
    """
    if not wanted:
        return entries
    kept = [(name, params) for name, params in entries if name in wanted]
    named = {name for name, _ in entries}
    return kept + [(name, _ADDED) for name in wanted if name not in named]


_Reported = list[tuple[str, str, dict[str, Any], str]]


def _reported(value: Any, where: _Where, registry: Any) -> _Reported:
    """`[[reported]]` entries -> [(algorithm, suite, suite config subset, published value)]."""
    if not isinstance(value, list):
        raise where.error("reported", "must be an array of tables: [[reported]] algorithm = .., suite = .., value = ..")
    out: _Reported = []
    for entry in value:
        required = {"algorithm", "suite", "value"}
        if not isinstance(entry, dict) or not required <= set(entry) <= required | {"config"}:
            raise where.error("reported", "each [[reported]] needs algorithm, suite and value, and may have config "
                              f"(a table of suite options); got {entry!r}")
        for key, table in (("algorithm", registry.algorithms), ("suite", registry.suites)):
            if entry[key] not in table:
                raise where.error("reported", str(unknown_name(key, str(entry[key]), table)))
        config = entry.get("config", {})
        if not isinstance(config, dict):
            raise where.error("reported", f"config must be a table of suite options, e.g. {{ ways = 5 }}; got {config!r}")
        try:  # the same names, types and ranges as in a block
            resolve_params(registry.suite(entry["suite"]).spec.config, config, f"suite {entry['suite']!r}")
        except UsageError as exc:
            raise where.error("reported", f"[[reported]] config: {exc}") from None
        out.append((entry["algorithm"], entry["suite"], dict(config), str(entry["value"])))
    return out


def _reported_for(reported: _Reported, algorithm: str, suite: str, s_cfg: Mapping[str, Any], registry: Any) -> str:
    """The published value for a cell: the matching entry with the most config keys ('' when none).

    An entry's config matches when each of its options equals the cell's resolved suite option, so
    `{ ways = 5 }` matches a cell that leaves `ways` at a default of 5 too.
    """
    matches = [(a, s, cfg, v) for a, s, cfg, v in reported if (a, s) == (algorithm, suite)]
    if not matches:
        return ""
    resolved = params_dict(resolve_params(registry.suite(suite).spec.config, dict(s_cfg), f"suite {suite!r}"))
    fitting = [(len(cfg), v) for _, _, cfg, v in matches
               if all(params_dict(resolve_params(registry.suite(suite).spec.config, cfg, ""))[k] == resolved[k]
                      for k in cfg)]
    return max(fitting, key=lambda item: item[0])[1] if fitting else ""


def _check_keys(table: Mapping[str, Any], valid: set[str], where: _Where, place: str, after: int = 0) -> None:
    for key in table:
        if key not in valid:
            raise where.error(key, f"unknown key in {place}; valid keys: {', '.join(sorted(valid))}", after)


def _table(container: Mapping[str, Any], key: str, where: _Where, after: int = 0) -> dict[str, Any]:
    value = container.get(key, {})
    if not isinstance(value, dict):
        raise where.error(key, f"must be a table of settings, got {value!r}", after)
    return dict(value)


def _seeds(value: Any, where: _Where) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise where.error("seeds", f"an integer seeds = N means seeds 0..N-1 and needs N >= 1, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise where.error("seeds", f"must be a positive integer N or a non-empty list of integer seeds, got {value!r}")


def _strings(value: Any, key: str, where: _Where) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise where.error(key, f"must be a name or a non-empty list of names, got {value!r}")


def _entries(value: Any, key: str, where: _Where, after: int, table: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """`["maml", {name = "reptile", inner_lr = 0.1}]` -> [(name, params)], names checked."""
    kind = key.rstrip("s")
    if value is None:
        raise where.error(key, f"each [[block]] needs {key} = [...] (names, tables with name = ..., or \"*\")", after)
    if value == "*" or value == ["*"]:
        return [(name, {}) for name in sorted(table)]
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise where.error(key, f"must be a non-empty list of {kind} names or tables, got {value!r}", after)
    out = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise where.error(key, f"each entry needs a name: {entry!r}", after)
        params = dict(entry)
        name = params.pop("name")
        if name not in table:
            err = unknown_name(kind, name, table)
            raise where.error(key, str(err), after)
        out.append((name, params))
    return out


def _expand(params: Mapping[str, Any], params_type: type, owner: str, where: _Where, after: int) -> list[dict]:
    """Cartesian product of swept values; each combination is validated against the params dataclass."""
    axes = []
    names = _field_names(params_type)
    for key, value in params.items():
        takes_list = key in names and is_sequence_field(params_type, key)
        sweep = isinstance(value, list) and (not takes_list or bool(value) and isinstance(value[0], list))
        if sweep and not value:
            raise where.error(key, f"{owner}: an empty list sweeps nothing", after)
        axes.append([(key, v) for v in value] if sweep else [(key, value)])
    combos = [dict(c) for c in itertools.product(*axes)] if axes else [{}]
    for combo in combos:
        try:
            resolve_params(params_type, combo, owner)
        except UsageError as exc:
            bad = (next((k for k in combo if k not in _field_names(params_type)), None)
                   or next((k for k in combo if k in str(exc)), None) or next(iter(combo), owner))
            raise where.error(bad, str(exc), after) from None
    return combos


def _field_names(params_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(params_type)}
