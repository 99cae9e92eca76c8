"""`harness merge`: the result stores of several machines into one, deduplicated, conflicts reported,
nothing overwritten.

A record's id is the SHA-256 of its content as canonical JSON (sorted keys, no spaces): two files hold the
same record exactly when their contents are equal, whatever their names, formatting or the store they sit
in. (File names do not identify records: they embed the time, pid and a random token of the write, and a
store copied by hand or re-merged keeps the content, not necessarily the name.)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import episode_values, interrupts
from harness.errors import UsageError
from harness.files import atomic_write, atomic_write_text, check_output_dir
from harness.results import ResultStore, kind_differences, machine_kind

#: Where a merge keeps a source's grid definition whose text differs from the target's (not read as a grid).
GRID_CONFLICTS_FOLDER = "merge-conflicts"


def record_id(record: Mapping[str, Any]) -> str:
    """The record's id: 20 hex digits of the SHA-256 of its canonical JSON (equal contents, equal ids)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def describe_kind(record: Mapping[str, Any]) -> str:
    """The record's `machine_kind`: `AMD EPYC (AVX512, openblas 0.3.23 Haswell), torch 2.4.1, 1 thread(s)`."""
    kind = machine_kind(record.get("environment") or {})
    kernels = ", ".join(str(kind[key]) for key in ("cpu isa", "blas") if kind[key])
    return (f"{kind['device'] or '?'}{f' ({kernels})' if kernels else ''}, torch {kind['torch'] or '?'}, "
            f"{kind['torch threads']} thread(s)")


def numbers(record: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a record reports about its cell (not timings): field name -> value, per-episode values
    as one array. Two records of a cell agree when these are equal."""
    metric = record.get("metric") or {}
    found: dict[str, Any] = {"metric.mean": metric.get("mean")}
    for entry in metric.get("per_step") or []:
        found[f"metric.mean@{entry['step']}"] = entry.get("mean")
    for name, entry in sorted((metric.get("trajectory") or {}).items()):
        found[f"metric.trajectory.{name}.mean"] = entry.get("mean")
    for name, entry in sorted((record.get("measurements") or {}).items()):
        found[f"measurements.{name}.mean"] = entry.get("mean")
    if record.get("per_episode"):
        found["per_episode"] = episode_values.values(record)
    return found


def _both_nan(x: Any, y: Any) -> bool:
    return isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)


def first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """'' when two records' `numbers` are equal, else the first field that differs, with both values."""
    import numpy as np

    left, right = numbers(a), numbers(b)
    for key in sorted(set(left) | set(right)):
        x, y = left.get(key), right.get(key)
        if key == "per_episode":
            if x is None or y is None:
                continue  # one record predates per-episode values: nothing to compare
            if x.shape != y.shape:
                return f"per_episode has shape {x.shape} vs {y.shape}"
            if not np.array_equal(x, y, equal_nan=True):
                unequal = ~((x == y) | (np.isnan(x) & np.isnan(y)))
                return (f"per_episode differs in {int(unequal.sum())} of {x.size} values "
                        f"(largest difference {float(np.nanmax(np.abs(x - y))):.6g})")
        elif x != y and not (_both_nan(x, y)):
            return f"{key} {x!r} vs {y!r}"
    return ""


@dataclass
class MergeReport:
    """What `merge_stores` did (or, in a dry run, would do); paths name source and target files."""

    copied: list[tuple[Path, Path]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (source file, file holding it)
    conflicts: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    grids_copied: list[tuple[Path, Path]] = field(default_factory=list)
    grids_identical: list[Path] = field(default_factory=list)
    grid_conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No conflict and no damaged record: the exit code is 0."""
        return not (self.conflicts or self.damaged or self.grid_conflicts)

    def summary(self, into: Path, dry_run: bool) -> str:
        """The closing line of `harness merge`."""
        copy = "would copy" if dry_run else "copied"
        return (f"{copy} {len(self.copied)} record(s) into {into}/, {len(self.duplicates)} duplicate(s), "
                f"{len(self.conflicts)} conflict(s), {len(self.damaged)} damaged (skipped); grids: "
                f"{len(self.grids_copied)} new, {len(self.grids_identical)} identical, "
                f"{len(self.grid_conflicts)} conflicting")


#: Records of one cell and configuration: (cell id, fingerprint) -> [(where it is, record)]; those made on
#: the same machine kind must agree.
_Groups = dict[tuple[Any, ...], list[tuple[str, dict[str, Any]]]]


def _record_text(record: Mapping[str, Any]) -> bytes:
    # The layout ResultStore.write gives a record, so a merged file reads like one the store wrote.
    return (json.dumps(record, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _free_name(directory: Path, name: str, taken: set[Path]) -> Path:
    """`directory/name`, or, when that name holds another record, the name with a counter before `.json`."""
    path, stem, n = directory / name, name[:-len(".json")], 1
    while path.exists() or path in taken:
        path, n = directory / f"{stem}-m{n}.json", n + 1
    return path


def _check_sources(sources: list[Path], into: Path) -> list[Path]:
    """The distinct source folders, each an existing folder other than the target; UsageError otherwise."""
    target = into.resolve()
    unique: list[Path] = []
    for source in sources:
        if not source.is_dir():
            what = "is not a folder" if source.exists() else "does not exist"
            raise UsageError(f"merge source {source} {what}; give results folders written by `harness run`")
        if source.resolve() == target:
            raise UsageError(f"merge source {source} is the --into folder itself; give another target")
        if source.resolve() not in {s.resolve() for s in unique}:
            unique.append(source)
    return unique


def merge_stores(sources: list[Path], into: Path, *, dry_run: bool = False) -> MergeReport:
    """Copy every record of `sources` that `into` lacks (by `record_id`) and the grid definitions they keep.

    Nothing in `into` is replaced or removed. A record of the same cell and fingerprint as another, made
    on the same kind of machine (`harness.results.machine_kind`: records made there have identical numbers,
    the harness seeds everything and runs deterministically), that reports different `numbers` is a
    conflict: it is still copied (both are kept, the leaderboard uses the newest) and reported naming both
    files. Unreadable source files
    are reported and skipped. A source's grid whose text differs from the target's grid of that name is
    kept in `.grids/merge-conflicts/` (the target's stays the one leaderboards read). `dry_run` writes
    nothing and reports the same.
    """
    sources = _check_sources(list(sources), into)
    if not dry_run:
        check_output_dir(into, "--into folder")
    report = MergeReport()
    target = ResultStore(into)
    known: dict[str, Path] = {}
    groups: _Groups = defaultdict(list)
    for path, record in target.entries():
        known.setdefault(record_id(record), path)
        _group(groups, str(path), record)
    report.warnings += [f"in the target: {problem}" for problem in target.problems]
    planned: set[Path] = set()
    grids: dict[Path, str] = {}
    for source in sources:
        store = ResultStore(source)
        for path, record in store.entries():
            interrupts.checkpoint()
            rid = record_id(record)
            if rid in known:
                report.duplicates.append((path, known[rid]))
                continue
            dest = _free_name(target.cell_dir(record["cell_id"]), path.name, planned)
            if not dry_run:
                dest = _write_new(dest, _record_text(record), planned)
            planned.add(dest)
            known[rid] = path
            report.copied.append((path, dest))
            where = f"{dest} (from {path})"
            report.conflicts += _conflicts(groups, where, record)
            _group(groups, where, record)
        report.damaged += store.problems
        _merge_grids(store, target, report, dry_run, grids)
    return report


def _write_new(dest: Path, data: bytes, taken: set[Path]) -> Path:
    while True:
        try:
            atomic_write(dest, lambda handle: handle.write(data), replace=False)
            return dest
        except FileExistsError:  # written meanwhile by someone else: another name, nothing replaced
            dest = _free_name(dest.parent, dest.name, taken)


def _group(groups: _Groups, where: str, record: dict[str, Any]) -> None:
    if record.get("status") == "ok" and record.get("fingerprint"):
        groups[(record["cell_id"], record["fingerprint"])].append((where, record))


def _conflicts(groups: _Groups, where: str, record: dict[str, Any]) -> list[str]:
    """A line naming the first record merged so far that disagrees with `record` on the same cell,
    fingerprint and kind of machine (the others would say the same about the same cell); [] when none does."""
    if record.get("status") != "ok" or not record.get("fingerprint"):
        return []
    env = record.get("environment") or {}
    for other_where, other in groups.get((record["cell_id"], record["fingerprint"]), []):
        if kind_differences(other.get("environment") or {}, env):
            continue
        difference = first_difference(other, record)
        if difference:
            return [f"{record['cell_id']} (fingerprint {record['fingerprint'][:12]}, "
                    f"{describe_kind(record)}): {difference}: {other_where} and {where}; both kept"]
    return []


def _merge_grids(store: ResultStore, target: ResultStore, report: MergeReport, dry_run: bool,
                 written: dict[Path, str]) -> None:
    """Copy the grid definitions of `store` that the target lacks, keep aside those that differ from the
    target's; `written` holds the texts this merge gave the target so far."""
    for path in store.saved_grids():
        text, dest = path.read_text(encoding="utf-8", errors="replace"), target.grids_dir / path.name
        ours = written.get(dest)
        if ours is None and dest.exists():
            ours = dest.read_text(encoding="utf-8", errors="replace")
        if ours is None:
            if not dry_run:
                atomic_write_text(dest, text, replace=False)
            written[dest] = text
            report.grids_copied.append((path, dest))
        elif ours == text:
            report.grids_identical.append(path)
        else:
            digest = hashlib.sha256(text.encode()).hexdigest()[:10]
            kept = target.grids_dir / GRID_CONFLICTS_FOLDER / f"{path.stem}-{digest}.toml"
            if not dry_run and not kept.exists():
                atomic_write_text(kept, text, replace=False)
            report.grid_conflicts.append(f"grid {path.stem!r}: {path} differs from {dest}; {dest} stays the "
                                         f"grid's definition, the other text is kept as {kept}")


def cli_merge(args: Any, registry: Any) -> int:
    """`harness merge SOURCE... --into DIR [--dry-run]`: 0 when clean, 1 with conflicts or damaged records."""
    report = merge_stores(args.sources, args.into, dry_run=args.dry_run)
    for source, dest in report.copied if args.dry_run else ():
        print(f"  would copy {source} -> {dest}")
    for line in report.warnings:
        print(f"harness: warning: {line}", file=sys.stderr)
    for line in report.damaged:
        print(f"harness: damaged record: {line}", file=sys.stderr)
    for line in [*report.conflicts, *report.grid_conflicts]:
        print(f"harness: conflict: {line}", file=sys.stderr)
    print(report.summary(args.into, args.dry_run) + (" (dry run: nothing written)" if args.dry_run else ""))
    return 0 if report.clean else 1
