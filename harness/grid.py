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
    budget = { iterations = 500 }   # optional; also seeds, backends, measurements
    exclude = ["metaopt"]           # optional: names left out of this block (of a "*" above all)

Extra measurements of the adapted learners at meta-test (plugins' `MeasurementSpec`s), at the top level
(every block) or in a block (replacing the top level's; `[]` switches them off), with their options (a
list value is one value, never a sweep) and optionally adaptation `steps` to measure at besides the final
one (`steps = [0]`: before adapting too; those columns end in `@0`):

    measurements = [{ name = "lipschitz", steps = [0] }, { name = "noise-robustness", sigmas = [0.01, 0.1] }]

They enter the fingerprint of the cells that enable them, never the cell id; a measurement is left out of
cells whose suite is of a task kind it does not measure.

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
import math
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import GridError, ParamError, UsageError, unknown_name
from harness.specs import (
    MAX_SEED,
    MEASUREMENT_STEPS_KEY,
    Budget,
    Cell,
    check_steps,
    format_params,
    is_sequence_field,
    measurement_requests,
    params_dict,
    resolve_params,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOP_KEYS = {"name", "description", "seeds", "backends", "budget", "block", "reported", "max_cells",
            "executor", "measurements"}
#: The most cells a grid may expand to unless it says otherwise (`max_cells`, `--max-cells`).
MAX_CELLS = 100_000
BLOCK_KEYS = {"algorithms", "suites", "seeds", "backends", "budget", "name", "exclude", "measurements"}


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
    #: The executor the grid asks for (`executor = "local"`); `harness run --executor` overrides it.
    executor: str | None = None


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
    """Parse a TOML grid file; syntax errors name the file, line and column, and bytes that are not
    UTF-8 (which TOML requires) name the line and byte offset."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read grid file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise GridError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                        "TOML grid files must be saved as UTF-8") from None
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


@dataclass
class _Block:
    """One [[block]] read and checked but not yet expanded; `size` is how many cells it can give."""

    index: int
    line: int
    budget: Budget
    seeds: Sequence[int]
    backends: list[str]
    algorithms: list[tuple[str, dict]]
    suites: list[tuple[str, dict]]
    all_algorithms: bool
    all_suites: bool
    size: int
    measurements: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def load_grid(
    name_or_path: str,
    registry: Any,
    *,
    algorithms: Sequence[str] = (),
    suites: Sequence[str] = (),
    backends: Sequence[str] = (),
    seeds: int | Sequence[int] | None = None,
    max_cells: int | None = None,
    runnable_only: bool = True,
) -> Grid:
    """Read, validate and expand a grid, applying the CLI's filters and overrides.

    Every name and parameter is checked before anything runs; errors carry file:line and key.
    `algorithms`/`suites` keep only cells of those names, and add a name a block does not mention
    with default parameters (a new plugin runs on the grid's suites); `backends` replaces the grid's
    backends; `seeds` replaces its seeds (N: seeds 0..N-1, or a list). The number of cells is counted
    before any is built: more than `max_cells` (else the grid's `max_cells`, else MAX_CELLS) is an
    error. A suite named explicitly that cannot run here (its data is missing) is an error, unless
    `runnable_only` is False (leaderboards of records made elsewhere): then its cells are `unavailable`.
    """
    for name in algorithms:
        registry.algorithm(name)
    for name in suites:
        registry.suite(name)
    for name in backends:
        registry.backend(name)
    if seeds is not None:
        seeds = _seeds(seeds, None, "--seeds")
    if max_cells is not None and (not isinstance(max_cells, int) or max_cells < 1):
        raise UsageError(f"--max-cells must be a positive integer, got {max_cells!r}")
    path = resolve_grid_source(name_or_path, registry)
    data, where = read_grid_file(path)
    _check_keys(data, TOP_KEYS, where, "the top level")
    for key in ("name", "description"):
        if key in data and (not isinstance(data[key], str) or (key == "name" and not data[key].strip())):
            raise where.error(key, f"must be a{' non-empty' if key == 'name' else ''} string, got {data[key]!r}")
    limit = max_cells or _max_cells(data.get("max_cells", MAX_CELLS), where)
    grid = Grid(name=str(data.get("name", path.stem)), description=str(data.get("description", "")), source=str(path))
    if "executor" in data:
        if not isinstance(data["executor"], str) or data["executor"] not in registry.executors:
            valid = ", ".join(sorted(registry.executors)) or "none registered"
            raise where.error("executor", f"must name a registered executor ({valid}), got {data['executor']!r}")
        grid.executor = data["executor"]
    raw_blocks = data.get("block", [])
    if not isinstance(raw_blocks, list) or not raw_blocks or not all(isinstance(b, dict) for b in raw_blocks):
        raise where.error("block", "a grid needs at least one [[block]] table with algorithms and suites")
    reported = _reported(data.get("reported", []), where, registry)
    blocks, line = [], 0
    for index, raw in enumerate(raw_blocks, start=1):
        line = where.line("block", line) or line
        blocks.append(_read_block(raw, index, line, data, where, registry, algorithms, suites, backends, seeds))
    total = sum(block.size for block in blocks)
    if total > limit:
        sizes = ", ".join(f"block {b.index}: {b.size:,}" for b in blocks)
        raise GridError(f"{path}: the grid expands to {total:,} cells ({sizes}), more than the limit of {limit:,}; "
                        "narrow it, or raise the limit with max_cells = N in the grid or --max-cells N")
    seen: dict[str, tuple[int, Cell]] = {}
    for block in blocks:
        _expand_block(block, grid, seen, reported, registry, where, runnable_only)
    return grid


def _read_block(raw: dict[str, Any], index: int, line: int, data: dict[str, Any], where: _Where, registry: Any,
                algorithms: Sequence[str], suites: Sequence[str], backends: Sequence[str],
                seeds: Sequence[int] | None) -> _Block:
    """Check one [[block]] (names, parameters' names and types, budget, seeds, backends) and count its cells."""
    _check_keys(raw, BLOCK_KEYS, where, f"[[block]] {index}", line)
    if "name" in raw and not isinstance(raw["name"], str):
        raise where.error("name", f"a block's name must be a string, got {raw['name']!r}", line)
    merged = {**_table(data, "budget", where), **_table(raw, "budget", where, line)}
    try:
        resolve_params(Budget, merged, "budget")  # names, types, finiteness and ranges, with the key to blame
    except ParamError as exc:
        key = exc.key or next(iter(merged), "budget")
        at = line if key in _table(raw, "budget", where, line) else 0
        raise where.error(key, str(exc).removeprefix("budget: "), at) from None
    budget = Budget(**merged)  # the values as written (`timeout = 300` stays an int), as fingerprints hold them
    block_seeds = seeds if seeds is not None else _seeds(raw.get("seeds", data.get("seeds", [0])), where, "seeds")
    block_backends = list(backends) or _strings(raw.get("backends", data.get("backends", ["auto"])), "backends", where)
    for name in block_backends:
        try:
            registry.backend(name)
        except UsageError as exc:
            raise where.error("backends", str(exc), line) from None
    algo_entries = _select(_entries(raw.get("algorithms"), "algorithms", where, line, registry.algorithms), algorithms)
    suite_entries = _select(_entries(raw.get("suites"), "suites", where, line, registry.suites), suites)
    excluded = _excluded(raw, where, line, registry)
    algo_entries = [(name, params) for name, params in algo_entries if name not in excluded]
    suite_entries = [(name, params) for name, params in suite_entries if name not in excluded]
    n_algos = sum(_count(params, registry.algorithm(name).spec.hparams, where, line) for name, params in algo_entries)
    n_suites = sum(_count(params, registry.suite(name).spec.config, where, line) for name, params in suite_entries)
    if "measurements" in raw:
        measurements = _measurements(raw["measurements"], where, line, registry)
    else:
        measurements = _measurements(data.get("measurements", []), where, 0, registry)
    return _Block(index, line, budget, block_seeds, block_backends, algo_entries, suite_entries,
                  raw.get("algorithms") in ("*", ["*"]), raw.get("suites") in ("*", ["*"]),
                  n_algos * n_suites * len(block_backends) * len(block_seeds), measurements)


def _measurements(value: Any, where: _Where, line: int, registry: Any) -> list[tuple[str, dict[str, Any]]]:
    """`[{ name = "lipschitz" }, { name = "noise-robustness", sigmas = [0.1] }]` -> [(name, options)],
    every name, option and `steps` checked against the measurement's spec (errors with file:line)."""
    shape = ('must be a list of tables, e.g. [{ name = "lipschitz" }, { name = "noise-robustness", '
             'sigmas = [0.01, 0.1] }]')
    if not isinstance(value, list):
        raise where.error("measurements", f"{shape}; got {value!r}", line)
    out: list[tuple[str, dict[str, Any]]] = []
    for entry in value:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise where.error("measurements", f"{shape}; each entry needs a name, got {entry!r}", line)
        options = dict(entry)
        name = options.pop("name")
        if name not in registry.measurements:
            known = registry.measurements
            raise where.error("measurements", str(unknown_name("measurement", name, known)), line)
        if name in (n for n, _ in out):
            raise where.error("measurements", f"measurement {name!r} is listed twice; give it once, with all "
                              "its options (its columns would collide)", line)
        own = {k: v for k, v in options.items() if k != MEASUREMENT_STEPS_KEY}
        try:
            resolve_params(registry.measurement(name).spec.options, own, f"measurement {name!r}")
            if MEASUREMENT_STEPS_KEY in options:
                check_steps(options[MEASUREMENT_STEPS_KEY], name)
        except ParamError as exc:
            raise where.error("measurements", str(exc), line) from None
        out.append((name, options))
    return out


def _expand_block(block: _Block, grid: Grid, seen: dict[str, tuple[int, Cell]], reported: _Reported,
                  registry: Any, where: _Where, runnable_only: bool) -> None:
    """Add a block's cells to `grid`: runnable ones to `cells`, the rest to `skipped` with the reason."""
    added = {name for name, params in block.algorithms + block.suites if params is _ADDED}
    suite_cfgs = [
        (name, cfg) for name, params in block.suites
        for cfg in _expand(params, registry.suite(name).spec.config, f"suite {name!r}", where, block.line)
    ]
    algo_cfgs = [
        (name, cfg) for name, params in block.algorithms
        for cfg in _expand(params, registry.algorithm(name).spec.hparams, f"algorithm {name!r}", where, block.line)
    ]
    unrunnable = {}
    for s_name, s_cfg in suite_cfgs:
        reason = _suite_check(registry.suite(s_name), s_cfg)
        if reason and runnable_only and not block.all_suites:
            raise where.error("suites", f"suite {s_name!r} cannot run here: {reason}", block.line)
        unrunnable[(s_name, repr(sorted(s_cfg.items())))] = reason
    for (s_name, s_cfg), (a_name, a_cfg), backend, seed in itertools.product(
        suite_cfgs, algo_cfgs, block.backends, block.seeds
    ):
        b_reg = registry.backend(backend)
        kind = registry.suite(s_name).spec.task_kind
        measured = measurement_requests((name, options) for name, options in block.measurements
                                        if kind in registry.measurement(name).spec.task_kinds)
        cell = Cell(a_name, tuple(sorted(a_cfg.items())), s_name, tuple(sorted(s_cfg.items())), b_reg.spec.name,
                    seed, block.budget, grid.name, _reported_for(reported, a_name, s_name, s_cfg, registry),
                    measured)
        if cell.id in seen:
            first_index, first = seen[cell.id]
            if first.budget != block.budget and not ({a_name, s_name} & added):
                raise where.error("budget", f"cell {cell.id} appears in blocks {first_index} and {block.index} "
                                  "with different budgets; a cell must have one budget", block.line)
            if first.measurements != measured and not ({a_name, s_name} & added):
                raise where.error("measurements", f"cell {cell.id} appears in blocks {first_index} and "
                                  f"{block.index} with different measurements; a cell must have one set",
                                  block.line)
            continue
        seen[cell.id] = (block.index, cell)
        a_reg, s_reg = registry.algorithm(a_name), registry.suite(s_name)
        kind = s_reg.spec.task_kind
        if kind not in a_reg.spec.task_kinds:
            if not block.all_algorithms:
                grid.skipped.append(Skipped(cell, "skipped", f"algorithm {a_name!r} supports "
                                    f"{'/'.join(sorted(a_reg.spec.task_kinds))} tasks; suite {s_name!r} is {kind}"))
            continue
        impossible = _pair_check(a_reg, a_cfg, s_reg, s_cfg)
        if impossible:
            if not (block.all_algorithms or block.all_suites):
                raise where.error("algorithms", f"algorithm {a_name!r} cannot run on suite {s_name!r} with "
                                  f"{format_params(s_cfg) or 'its defaults'}: {impossible}", block.line)
            grid.skipped.append(Skipped(cell, "skipped", f"algorithm {a_name!r} on suite {s_name!r}: {impossible}"))
            continue
        m_regs = [(registry.measurement(name), "measurement") for name, _ in measured]
        for reg, what in ((b_reg, "backend"), (a_reg, "algorithm"), (s_reg, "suite"), *m_regs):
            if not reg.available:
                grid.skipped.append(Skipped(cell, "unavailable", f"{what} {reg.spec.name!r} unavailable: {reg.reason}"))
                break
        else:
            reason = unrunnable[(s_name, repr(sorted(s_cfg.items())))]
            if reason:
                grid.skipped.append(Skipped(cell, "unavailable", f"suite {s_name!r}: {reason}"))
            else:
                grid.cells.append(cell)


def _suite_check(reg: Any, overrides: dict[str, Any]) -> str:
    """The suite's own "can this configuration run here" check ('' when it can, or has none)."""
    if reg.spec.check is None or not reg.available:
        return ""
    return reg.spec.check(resolve_params(reg.spec.config, overrides, f"suite {reg.spec.name!r}"))


def _pair_check(a_reg: Any, a_cfg: dict[str, Any], s_reg: Any, s_cfg: dict[str, Any]) -> str:
    """The algorithm's own "can it run on this suite configuration" check ('' when it can, or has none)."""
    if a_reg.spec.check is None or not a_reg.available or not s_reg.available:
        return ""
    hparams = resolve_params(a_reg.spec.hparams, a_cfg, f"algorithm {a_reg.spec.name!r}")
    suite_config = resolve_params(s_reg.spec.config, s_cfg, f"suite {s_reg.spec.name!r}")
    return a_reg.spec.check(hparams, s_reg.spec.name, suite_config)


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


def _seeds(value: Any, where: _Where | None, key: str) -> Sequence[int]:
    """`N` (seeds 0..N-1, as a lazy range) or a list of distinct seeds in 0..MAX_SEED."""
    def fail(message: str) -> GridError | UsageError:
        return where.error(key, message) if where is not None else UsageError(f"{key}: {message}")

    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEED + 1:
            raise fail(f"an integer seeds = N means seeds 0..N-1 and needs 1 <= N <= {MAX_SEED + 1:,}, got {value}")
        return range(value)
    if isinstance(value, (list, tuple, range)) and len(value) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        bad = next((v for v in value if not 0 <= v <= MAX_SEED), None)
        if bad is not None:
            raise fail(f"seed {bad} is out of range; seeds are integers from 0 to {MAX_SEED:,}")
        twice = [seed for seed, n in Counter(value).items() if n > 1]
        if twice:
            raise fail(f"seed {twice[0]} is listed twice")
        return list(value)
    raise fail(f"must be a positive integer N or a non-empty list of integer seeds, got {value!r}")


def _max_cells(value: Any, where: _Where) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise where.error("max_cells", f"must be a positive integer (the most cells the grid may expand to), got {value!r}")


def _excluded(raw: Mapping[str, Any], where: _Where, line: int, registry: Any) -> set[str]:
    """The algorithm and suite names a block's `exclude = [...]` leaves out (of a "*" above all), checked."""
    if "exclude" not in raw:
        return set()
    names = _strings(raw["exclude"], "exclude", where)
    known = {**registry.algorithms, **registry.suites}
    for name in names:
        if name not in known:
            raise where.error("exclude", str(unknown_name("name", name, known)), line)
    return set(names)


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


def _axes(params: Mapping[str, Any], params_type: type, owner: str, where: _Where, after: int
          ) -> list[list[tuple[str, Any]]]:
    """One list of (key, value) choices per parameter: a list value sweeps, unless the parameter itself
    takes a list (then a list of lists sweeps it)."""
    axes = []
    names = _field_names(params_type)
    for key, value in params.items():
        takes_list = key in names and is_sequence_field(params_type, key)
        sweep = isinstance(value, list) and (not takes_list or bool(value) and isinstance(value[0], list))
        if sweep and not value:
            raise where.error(key, f"{owner}: an empty list sweeps nothing", after)
        axes.append([(key, v) for v in value] if sweep else [(key, value)])
    return axes


def _count(params: Mapping[str, Any], params_type: type, where: _Where, after: int) -> int:
    """How many configurations `params` sweeps, without building them."""
    return math.prod(len(axis) for axis in _axes(params, params_type, "", where, after))


def _expand(params: Mapping[str, Any], params_type: type, owner: str, where: _Where, after: int) -> list[dict]:
    """Cartesian product of swept values; each combination is validated against the params dataclass."""
    axes = _axes(params, params_type, owner, where, after)
    combos = [dict(c) for c in itertools.product(*axes)] if axes else [{}]
    for combo in combos:
        try:
            resolve_params(params_type, combo, owner)
        except ParamError as exc:
            raise where.error(exc.key or next(iter(combo), owner), str(exc), after) from None
    return combos


def _field_names(params_type: type) -> set[str]:
    return {f.name for f in dataclasses.fields(params_type)}
