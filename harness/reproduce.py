"""`harness reproduce CELL_ID`: re-run one cell from its record and say whether its numbers come out again.

The cell is rebuilt from the record's own `cell` entry and resolved against the plugins loaded now; a
configuration or code version that differs from the record's is named field by field (the result may
then legitimately differ). The re-run's metric mean, per-step means and, when both records keep them,
per-episode values are compared with the stored ones: exactly when the machine kind is the same (CPU
model, torch threads, torch version and GPU; the harness seeds everything and runs deterministically, so
the numbers must be bit for bit the same), else within a relative tolerance (1e-3 unless `--tolerance`).
The new record is not written to the store: reproducing checks a result, it does not add one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.results import ResultStore, kind_differences
from harness.specs import Cell

#: The relative tolerance on another kind of machine, when `--tolerance` is not given.
DEFAULT_TOLERANCE = 1e-3
#: Environment fields that differ between any two runs and say nothing about the machine.
_VOLATILE = {"date"}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts (lists and scalars are leaves)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value} if prefix else {}


def differences(old: Mapping[str, Any], new: Mapping[str, Any], skip: set[str] = frozenset()) -> list[str]:
    """`field: OLD (record) -> NEW (now)` for every leaf that differs between two nested dicts."""
    a, b = flatten(old), flatten(new)
    return [f"{key}: {a.get(key, '(absent)')!r} (record) -> {b.get(key, '(absent)')!r} (now)"
            for key in sorted(set(a) | set(b)) if key not in skip and a.get(key) != b.get(key)]


def _close(old: float | None, new: float | None, tolerance: float) -> bool:
    """Whether `new` is within the relative `tolerance` of `old` (non-finite numbers are None)."""
    if old is None or new is None:
        return old is None and new is None
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) and math.isnan(new)
    return abs(new - old) <= tolerance * max(abs(old), abs(new))


def _pair(name: str, old: float | None, new: float | None) -> str:
    if old is None or new is None:
        return f"{name}: {old!r} (record) vs {new!r} (now)"
    gap = abs(new - old)
    rel = gap / max(abs(old), abs(new)) if max(abs(old), abs(new)) else 0.0
    return f"{name}: {old!r} (record) vs {new!r} (now), difference {gap:.3g} (relative {rel:.3g})"


def compare_numbers(old: Mapping[str, Any], new: Mapping[str, Any],
                    tolerance: float) -> tuple[bool, list[str]]:
    """Whether `new`'s metric (mean, per-step means, per-episode values) matches `old`'s within the relative
    `tolerance` (0: identical), and one line per thing compared."""
    import numpy as np

    from harness import episode_values

    lines, ok = [], True
    om, nm = old.get("metric") or {}, new.get("metric") or {}
    label = f"{om.get('label') or om.get('name') or 'metric'} after {om.get('final_step')} step(s)"
    same = _close(om.get("mean"), nm.get("mean"), tolerance)
    ok &= same
    lines.append(("  " if same else "X ") + _pair(f"metric mean ({label})", om.get("mean"), nm.get("mean")))
    old_steps = {e["step"]: e.get("mean") for e in om.get("per_step") or []}
    new_steps = {e["step"]: e.get("mean") for e in nm.get("per_step") or []}
    if old_steps and new_steps:
        bad = [s for s in sorted(set(old_steps) | set(new_steps))
               if not _close(old_steps.get(s), new_steps.get(s), tolerance)]
        ok &= not bad
        lines.append(f"  per-step means: all {len(old_steps)} match" if not bad else
                     "X per-step means differ at step(s) " + ", ".join(map(str, bad)) + "; first: "
                     + _pair(f"step {bad[0]}", old_steps.get(bad[0]), new_steps.get(bad[0])))
    if old.get("per_episode") and new.get("per_episode"):
        if episode_values.identity(old) != episode_values.identity(new):
            ok = False
            lines.append(f"X test episodes differ: {episode_values.identity(old)} (record) vs "
                         f"{episode_values.identity(new)} (now)")
        else:
            a, b = episode_values.values(old), episode_values.values(new)
            if a.shape != b.shape:
                ok = False
                lines.append(f"X per-episode values have shape {a.shape} (record) vs {b.shape} (now)")
            else:
                scale = np.maximum(np.abs(a), np.abs(b))
                match = (np.abs(a - b) <= tolerance * scale) | (np.isnan(a) & np.isnan(b))
                ok &= bool(match.all())
                worst = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
                shape = f"{a.shape[0]} steps x {a.shape[1]} episodes"
                lines.append(f"  per-episode values: all {a.size} match ({shape})" if match.all() else
                             f"X per-episode values: {int((~match).sum())} of {a.size} differ ({shape}; "
                             f"largest difference {worst:.3g})")
    return ok, lines


@dataclass
class Reproduction:
    """The outcome of `reproduce`: the verdict, the new record, and what differed."""

    reproduced: bool
    record: dict[str, Any]
    tolerance: float
    config_changes: list[str] = field(default_factory=list)
    environment_changes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def stored_record(store: ResultStore, query: str) -> tuple[dict[str, Any], Path | None]:
    """The ok record to reproduce for `query` (a cell id, unique prefix, or record file) and its file.

    A cell whose newest record did not end ok is reproduced from its newest ok record; UsageError when it
    has none (a failed cell has no metric to compare)."""
    record = store.find(query)
    candidates = [(p, r) for p, r in store.entries(record["cell_id"])] if not Path(query).is_file() else []
    if record["status"] != "ok":
        ok = [(p, r) for p, r in candidates if r["status"] == "ok"]
        if not ok:
            raise UsageError(f"the record of {record['cell_id']} has status {record['status']!r} "
                             f"({record.get('reason') or 'no reason given'}); only an ok record has a metric "
                             "to reproduce")
        return ok[-1][1], ok[-1][0]
    path = Path(query) if Path(query).is_file() else next((p for p, r in candidates if r == record), None)
    return record, path


def rebuild(record: Mapping[str, Any], registry: Any) -> tuple[Cell, dict[str, Any], list[str]]:
    """The record's cell, resolved under the loaded plugins, and the configuration and code version fields
    that differ from the record's ([] when the fingerprint is the record's); UsageError when the cell cannot
    be built or run here."""
    from harness.cells import resolve_cell

    try:
        cell = Cell.from_dict(record["cell"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"the record of {record['cell_id']} does not describe a cell this harness can "
                         f"build: {exc}") from None
    try:
        resolved = resolve_cell(cell, registry)
    except UsageError as exc:
        raise UsageError(f"cannot rebuild the cell of {record['cell_id']} from its record: {exc} (a plugin's "
                         "algorithm or suite needs its plugin loaded: -p MODULE)") from None
    parts = ((registry.backend(cell.backend), "backend"), (registry.algorithm(cell.algorithm), "algorithm"),
             (registry.suite(cell.suite), "suite"))
    for reg, what in parts:
        if not reg.available:
            raise UsageError(f"cannot reproduce {cell.id} here: {what} {reg.spec.name!r} is unavailable "
                             f"({reg.reason})")
    changes: list[str] = []
    if resolved["fingerprint"] != record.get("fingerprint"):
        changes = [f"config.{line}" for line in differences(record.get("config") or {}, resolved["config"])]
        changes += [f"code_version.{line}" for line in
                    differences(record.get("code_version") or {}, resolved["code_version"])]
        changes = changes or ["the fingerprint differs (the record was made by another fingerprint scheme)"]
    return cell, resolved, changes


def reproduce(record: Mapping[str, Any], registry: Any, *, tolerance: float | None = None,
              in_process: bool = False) -> Reproduction:
    """Re-run `record`'s cell under the loaded plugins and compare its numbers with the record's: exactly
    on the same machine kind (`harness.results.machine_kind`), else within `tolerance` (default
    DEFAULT_TOLERANCE); a given `tolerance` applies everywhere."""
    from harness.cells import run_one

    cell, resolved, changes = rebuild(record, registry)
    new = run_one(cell, registry, in_process=in_process, resolved=resolved)
    old_env, new_env = record.get("environment") or {}, new.get("environment") or {}
    same_kind = not kind_differences(old_env, new_env)
    tol = tolerance if tolerance is not None else 0.0 if same_kind else DEFAULT_TOLERANCE
    out = Reproduction(False, new, tol, changes, differences(old_env, new_env, _VOLATILE))
    if new["status"] != "ok":
        out.lines.append(f"X the re-run ended {new['status']}: {new.get('reason') or 'no reason given'}")
        return out
    out.reproduced, out.lines = compare_numbers(record, new, tol)
    return out


def _comparison(result: Reproduction, record: Mapping[str, Any], asked: float | None) -> str:
    """How the numbers were compared, and why that way."""
    if asked is not None:
        return f"relative tolerance {asked:g} (--tolerance)"
    if result.tolerance == 0:
        return "identical numbers required (same GPU or CPU model and kernels, torch version and threads)"
    old, new = record.get("environment") or {}, result.record.get("environment") or {}
    differ = ", ".join(kind_differences(old, new))
    return f"relative tolerance {result.tolerance:g} (another kind of machine: {differ} differ)"


def cli_reproduce(args: Any, registry: Any) -> int:
    """`harness reproduce CELL_ID [--results DIR] [--tolerance REL] [--in-process]`: 0 reproduced, 1 not."""
    tolerance = args.tolerance
    if tolerance is not None and not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise UsageError(f"--tolerance must be a relative tolerance from 0 (identical) to below 1, "
                         f"got {tolerance!r}")
    if not args.results.is_dir():
        raise UsageError(f"results directory {args.results} does not exist (pass --results DIR)")
    store = ResultStore(args.results)
    record, path = stored_record(store, args.cell_id)
    for problem in store.problems:
        print(f"harness: warning: {problem}", file=sys.stderr)
    _, _, changes = rebuild(record, registry)  # a cell that cannot run here is an error before anything runs
    print(f"reproducing {record['cell_id']}\n  record: {path or args.cell_id} "
          f"(finished {record.get('finished_at')})")
    if changes:
        print("  the configuration or code differs from the record's (the result may legitimately differ):")
        print("\n".join(f"    {line}" for line in changes))
    else:
        print(f"  configuration and code versions: as recorded (fingerprint {record['fingerprint'][:12]})")
    where = "this process" if args.in_process else "its own process"
    print(f"  re-running it in {where}; the new record is not written to {args.results}/", flush=True)
    from harness.cellprocess import join_supervisors

    try:
        result = reproduce(record, registry, tolerance=tolerance, in_process=args.in_process)
    finally:
        join_supervisors()  # the cell's supervisor process, so none outlives the command
    if result.environment_changes:
        print("  environment fields that differ:")
        print("\n".join(f"    {line}" for line in result.environment_changes))
    else:
        print("  environment: identical")
    how = _comparison(result, record, tolerance)
    print(f"  comparison: {how}")
    print("\n".join(result.lines))
    print("REPRODUCED" if result.reproduced else "NOT REPRODUCED")
    return 0 if result.reproduced else 1
