"""Versioned result records: environment capture, fingerprints, an append-only store, `harness show` text."""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import functools
import hashlib
import json
import math
import os
import platform
import re
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import episode_values
from harness.errors import HarnessError, UsageError
from harness.files import atomic_write_text

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "timeout", "diverged", "skipped", "unavailable")
PLUGIN_GROUP = "harness.plugins"
#: The folder of a results store that keeps the grids run against it (not a cell: no record matches it).
GRIDS_FOLDER = ".grids"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string, e.g. `2026-11-23T07:00:00.123456+00:00`."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def plugin_distributions() -> dict[str, str]:
    """{distribution name: version} of installed distributions with entry points in `harness.plugins`."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            if dist.entry_points.select(group=PLUGIN_GROUP):
                found[dist.metadata["Name"]] = dist.version
        except Exception:  # a broken dist-info must not stop a benchmark from being recorded
            continue
    return dict(sorted(found.items()))


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, falling back to `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_kernels() -> dict[str, str | None]:
    """Which kernels compute on this CPU: the instruction set torch's CPU kernels dispatch to (`isa`) and
    the BLAS that numpy and scipy call, with the core type it chose (`blas`). Virtual machines that report
    one CPU model name can differ in these, and so in the last bits of float results; None when unknown.
    Fixed for a process's life, so computed once (in-process runs describe every cell). Only the BLAS
    shipped inside numpy's and scipy's wheels counts: other packages load their own copies, and which of
    them a process has loaded must not change what a record says about the machine."""
    import torch

    isa = blas = None
    with contextlib.suppress(Exception):
        isa = torch.backends.cpu.get_cpu_capability()
    with contextlib.suppress(Exception):  # only loaded libraries are seen: import the two that call a BLAS
        import numpy  # noqa: F401
        import scipy.linalg  # noqa: F401
        import threadpoolctl

        pools = {" ".join(str(pool.get(key)) for key in ("internal_api", "version", "architecture"))
                 for pool in threadpoolctl.threadpool_info()
                 if pool.get("user_api") == "blas" and _ships_with_numpy_or_scipy(pool.get("filepath") or "")}
        blas = ", ".join(sorted(pools)) or None
    return {"isa": isa, "blas": blas}


def _ships_with_numpy_or_scipy(path: str) -> bool:
    """Whether a loaded library lies in numpy's or scipy's own folders (`numpy.libs`, `scipy/.libs`...)."""
    return any(part.split(".")[0] in ("numpy", "scipy") for part in Path(path).parent.parts[-2:])


#: `machine_kind` fields that records written before they were recorded lack: compared only when both
#: sides know them.
_KIND_RECORDED_LATER = ("cpu isa", "blas")


def machine_kind(environment: Mapping[str, Any]) -> dict[str, Any]:
    """What must be equal for a re-run to give identical numbers: GPU or CPU model and the CPU's kernels,
    torch version and threads."""
    cpu = environment.get("cpu") or {}
    return {"device": environment.get("gpu") or cpu.get("model"), "cpu isa": cpu.get("isa"),
            "blas": cpu.get("blas"), "torch": environment.get("torch"),
            "torch threads": cpu.get("torch_threads")}


def kind_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The `machine_kind` fields on which two environments differ (a field an older record lacks is
    not compared)."""
    ka, kb = machine_kind(a), machine_kind(b)
    return [key for key in ka if ka[key] != kb[key]
            and not (key in _KIND_RECORDED_LATER and (ka[key] is None or kb[key] is None))]


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state() -> dict[str, Any] | None:
    """{"sha", "dirty"} of the git checkout holding the `harness` package; None when there is none.

    `dirty` counts modified tracked files only: untracked result files do not make a run dirty.
    The package must be tracked by that checkout, so a virtualenv inside some other repository
    does not borrow that repository's sha.
    """
    init = Path(__file__).resolve().parent / "__init__.py"
    cwd = init.parent.parent
    sha = _git(["rev-parse", "HEAD"], cwd)
    if not sha or _git(["ls-files", "--error-unmatch", str(init)], cwd) is None:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {"sha": sha.strip(), "dirty": None if status is None else bool(status.strip())}


#: The parts of `capture_environment` that cannot change while a process runs, when a long-lived process
#: (the fork server cells start from) computed them once for its children: see `remember_environment`.
_STATIC_ENVIRONMENT: dict[str, Any] | None = None


def _static_environment() -> dict[str, Any]:
    """Software, packages, plugins, CPU model and git state: the same for every cell of a run."""
    import torch

    from harness import __version__

    cudnn = None
    with contextlib.suppress(Exception):  # probing fails on broken CUDA installs; the record still matters
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "harness": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "packages": {name: _dist_version(name) for name in ("numpy", "pandas", "pluggy", "tabulate")},
        "plugins": plugin_distributions(),
        "cpu_model": cpu_model(),
        "cpu_kernels": dict(cpu_kernels()),
        "git": git_state(),
    }


def remember_environment() -> None:
    """Compute the static part of the environment now and reuse it in this process and its forks.

    The fork server calls this once: its children run the code it imported at the start of the run, so
    the git state and package versions of that moment are the ones that describe them (and every cell
    is spared the git subprocesses and package scans, tens of milliseconds)."""
    global _STATIC_ENVIRONMENT
    _STATIC_ENVIRONMENT = _static_environment()


def capture_environment(backend_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe the software and machine a record was produced on (no hostname, for privacy).

    `backend_info` is the backend's `describe()`; its `gpu`, `gpu_name` or (when it is not the CPU)
    `device_name` becomes the GPU name. Never raises for a missing tool or package.
    """
    import torch

    static = dict(_STATIC_ENVIRONMENT if _STATIC_ENVIRONMENT is not None else _static_environment())
    info = dict(backend_info or {})
    cpu = static.pop("cpu_model")
    kernels = static.pop("cpu_kernels")
    git = static.pop("git")
    gpu = info.get("gpu") or info.get("gpu_name")
    if not gpu and info.get("device_name") and info.get("device_name") != cpu:
        gpu = info["device_name"]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        **static,
        "cpu": {
            "model": cpu,
            **kernels,
            "logical_cpus": os.cpu_count(),
            "usable_cpus": affinity,
            "torch_threads": torch.get_num_threads(),
        },
        "gpu": gpu,
        "backend": _jsonable(info, "backend_info"),
        "git": git,
        "date": utc_now(),
    }


def _jsonable(value: Any, where: str) -> Any:
    """A JSON-safe copy: tuples become lists, non-finite floats None, numpy/torch scalars Python numbers."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item(), where)
        except (TypeError, ValueError, RuntimeError):
            pass
    raise HarnessError(
        f"record field {where} holds a {type(value).__name__}, which is not JSON-serialisable; "
        "valid: str, int, float, bool, None, lists and dicts of them"
    )


def fingerprint(config: Mapping[str, Any], code_version: Mapping[str, Any]) -> str:
    """SHA-256 hex of the resolved config and code version as canonical JSON (sorted keys, no spaces)."""
    payload = {"config": _jsonable(config, "config"), "code_version": _jsonable(code_version, "code_version")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def slugify(text: str, max_len: int = 80) -> str:
    """A readable, filesystem-safe form of `text` plus a short hash, so distinct texts never collide."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("._")[:max_len].rstrip("._")
    return f"{readable}-{digest}" if readable else digest


def record_time(record: Mapping[str, Any]) -> _dt.datetime:
    """When a record finished (else started); the epoch when it says neither, naive times read as UTC."""
    for key in ("finished_at", "started_at"):
        value = record.get(key)
        if isinstance(value, str):
            try:
                when = _dt.datetime.fromisoformat(value)
            except ValueError:
                continue
            return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
    return _EPOCH


#: A record file larger than this is not read (records are kilobytes; a huge file is not one).
MAX_RECORD_BYTES = 64 << 20
#: Records nest a few levels (metric.per_step[i], suite_info); deeper is not a record.
MAX_RECORD_DEPTH = 32
_NUM = (int, float)
_NONE = type(None)


def _kind(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is _NONE else t.__name__ for t in types)


#: What the harness reads of a record: field -> (allowed types, required). Other fields are carried along.
_RECORD_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((int,), True), "cell_id": ((str,), True), "status": ((str,), True), "reason": ((str,), False),
    "cell": ((dict,), True), "config": ((dict,), False), "fingerprint": ((str,), False),
    "code_version": ((dict,), False), "seeds": ((dict,), False), "environment": ((dict,), False),
    "execution": ((dict,), False), "started_at": ((str,), False), "finished_at": ((str,), False),
    "metric": ((dict, _NONE), False), "timings": ((dict, _NONE), False), "memory": ((dict, _NONE), False),
    "params": ((int, _NONE), False), "suite_info": ((dict, _NONE), False), "curve": ((list, _NONE), False),
    "best": ((dict, _NONE), False), "traceback": ((str,), False), "algorithm_info": ((dict, _NONE), False),
    "per_episode": ((dict, _NONE), False), "measurements": ((dict, _NONE), False),
}
_CELL_FIELDS = {"algorithm": ((str,), True), "suite": ((str,), True), "backend": ((str,), True),
                "seed": ((int,), True), "hparams": ((dict,), False), "suite_config": ((dict,), False),
                "budget": ((dict,), False), "grid": ((str,), False), "reported": ((str,), False)}
_METRIC_FIELDS = {"name": ((str,), False), "label": ((str,), False), "higher_is_better": ((bool,), False), "mean": ((*_NUM, _NONE), False),
                  "ci95": ((*_NUM, _NONE), False), "std": ((*_NUM, _NONE), False), "n": ((int, _NONE), False),
                  "final_step": ((int, _NONE), False), "per_step": ((list,), False), "episodes": ((str,), False),
                  "trajectory": ((dict,), False)}
_TRAJECTORY_FIELDS = {"mean": ((*_NUM, _NONE), False), "ci95": ((*_NUM, _NONE), False), "n": ((int,), False),
                      "label": ((str,), False)}
_MEASUREMENT_FIELDS = {"mean": ((*_NUM, _NONE), False), "ci95": ((*_NUM, _NONE), False), "n": ((int,), False),
                       "label": ((str,), False), "higher_is_better": ((bool, _NONE), False)}
_STEP_FIELDS = {"step": ((int,), True), "mean": ((*_NUM, _NONE), False), "ci95": ((*_NUM, _NONE), False)}
_MEMORY_FIELDS = {"peak_bytes": ((*_NUM, _NONE), False), "kind": ((str,), False)}
_EXECUTION_FIELDS = {"mode": ((str,), False), "exclusive": ((bool,), False), "shared_with": ((int,), False)}
_CURVE_FIELDS = {"iteration": ((int,), False), "train_loss": ((*_NUM, _NONE), False),
                 "val_metric": ((*_NUM, _NONE), False), "elapsed_s": ((*_NUM, _NONE), False)}


def _check_fields(table: Mapping[str, Any], fields: Mapping[str, tuple[tuple[type, ...], bool]], where: str) -> str:
    for key, (types, required) in fields.items():
        name = f"{where}.{key}" if where else key
        if key not in table:
            if required:
                return f"it has no {name!r}"
            continue
        if not _kind(table[key], types):
            return f"{name} is a {type(table[key]).__name__}, expected {_type_names(types)}"
    return ""


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and dicts, counted without recursion (and stopping past the limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, level)
        if deepest > MAX_RECORD_DEPTH:
            break
        stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def record_problem(record: Any) -> str:
    """'' if `record` is a record this harness can read and publish, else what is wrong with it.

    Checks the schema, the nesting depth and the type of every field the harness reads (the cell, the
    metric and its per-step entries, timings, memory, execution, the curve), so a damaged record is
    refused whole at the door rather than breaking a leaderboard later.
    """
    if not isinstance(record, dict):
        return f"a result record is a JSON object, got {type(record).__name__}"
    schema = record.get("schema")
    if not _kind(schema, (int,)) or not 1 <= schema <= SCHEMA_VERSION:
        return f"schema {schema!r} is not one this harness reads (1..{SCHEMA_VERSION}); upgrade the harness"
    if _depth(record) > MAX_RECORD_DEPTH:
        return f"it is nested more than {MAX_RECORD_DEPTH} levels deep, which no record is"
    problem = _check_fields(record, _RECORD_FIELDS, "")
    if problem:
        return problem
    if not record["cell_id"]:
        return "its cell_id is empty"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is not one of {', '.join(STATUSES)}"
    metric = record.get("metric") or {}
    nested = [(record["cell"], _CELL_FIELDS, "cell"), (record.get("memory") or {}, _MEMORY_FIELDS, "memory"),
              (record.get("execution") or {}, _EXECUTION_FIELDS, "execution"), (metric, _METRIC_FIELDS, "metric")]
    nested += [(step, _STEP_FIELDS, f"metric.per_step[{i}]") for i, step in enumerate(metric.get("per_step") or [])]
    nested += [(point, _CURVE_FIELDS, f"curve[{i}]") for i, point in enumerate(record.get("curve") or [])]
    trajectory = metric.get("trajectory") if isinstance(metric, dict) else None
    nested += [(entry, _TRAJECTORY_FIELDS, f"metric.trajectory.{name}") for name, entry in
               (trajectory.items() if isinstance(trajectory, dict) else ())]
    measurements = record.get("measurements") or {}
    nested += [(entry, _MEASUREMENT_FIELDS, f"measurements.{name}") for name, entry in
               (measurements.items() if isinstance(measurements, dict) else ())]
    for table, fields, where in nested:
        if not isinstance(table, dict):
            return f"{where} is a {type(table).__name__}, expected an object"
        problem = _check_fields(table, fields, where)
        if problem:
            return problem
    if record.get("per_episode"):
        problem = episode_values.entry_problem(record["per_episode"])
        if problem:
            return problem
    for key, value in (record.get("timings") or {}).items():
        if not _kind(value, (*_NUM, str, _NONE)):
            return f"timings.{key} is a {type(value).__name__}, expected a number"
    return ""


def validate_record(record: Any) -> None:
    """Raise HarnessError unless `record` passes `record_problem`: what the store writes, it can read back."""
    problem = record_problem(record)
    if problem:
        cell = record.get("cell_id") if isinstance(record, Mapping) else None
        raise HarnessError(f"record {cell!r}: {problem}" if isinstance(cell, str) else f"bad record: {problem}")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (records write null for a missing number)")


def read_record(path: Path) -> dict[str, Any]:
    """Read and check one record file; ValueError saying what is wrong (size, encoding, JSON, fields)."""
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"{size:,} bytes, more than any record ({MAX_RECORD_BYTES:,})")
        record = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_reject_constant)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte offset {exc.start})") from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_RECORD_DEPTH} levels deep, which no record is") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    problem = record_problem(record)
    if problem:
        raise ValueError(problem)
    return record


class ResultStore:
    """Records as one JSON file each under `root/<cell slug>/<UTC time>-<random>.json`; never overwritten.

    Unreadable files are skipped, left in place, and described in `problems`.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._problems: dict[Path, str] = {}

    @property
    def problems(self) -> list[str]:
        """One line per record file that could not be read, e.g. a half-written file from a crash."""
        return [f"{path}: {why}" for path, why in sorted(self._problems.items())]

    def cell_dir(self, cell_id: str) -> Path:
        """The directory holding every record of `cell_id`."""
        return self.root / slugify(cell_id)

    @property
    def grids_dir(self) -> Path:
        """Where the definitions of the grids run against this store are kept (`save_grid`)."""
        return self.root / GRIDS_FOLDER

    def save_grid(self, name: str, text: str) -> Path:
        """Keep the TOML of grid `name` as last run against this store, so its leaderboards can be rebuilt
        from the store alone (`harness leaderboard`), even when the grid came from a file elsewhere."""
        safe = name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=,+-]*", name) else slugify(name)
        path = self.grids_dir / f"{safe}.toml"
        atomic_write_text(path, text)
        return path

    def saved_grids(self) -> list[Path]:
        """The grid definitions kept by `save_grid`."""
        return sorted(self.grids_dir.glob("*.toml")) if self.grids_dir.is_dir() else []

    def write(self, record: Mapping[str, Any]) -> Path:
        """Validate and append `record` as a new file (whole or not at all, never over another); return its path."""
        data = _jsonable(record, "record")
        validate_record(data)
        text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        directory = self.cell_dir(data["cell_id"])
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        while True:
            path = directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}.json"
            try:
                atomic_write_text(path, text, replace=False, point="record")
                return path
            except FileExistsError:  # however unlikely the clash, another name; nothing is replaced
                continue

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            record = read_record(path)
        except ValueError as exc:
            self._problems[path] = f"skipped: {exc}"
            return None
        self._problems.pop(path, None)
        return record

    def problems_in(self, cell_id: str) -> list[str]:
        """The `problems` of files in `cell_id`'s folder (as found by the last read of it)."""
        folder = self.cell_dir(cell_id)
        return [f"{path}: {why}" for path, why in sorted(self._problems.items()) if path.parent == folder]

    def entries(self, cell_id: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
        """(path, record) pairs, oldest first; only `cell_id`'s when given."""
        if cell_id is not None:
            paths = sorted(self.cell_dir(cell_id).glob("*.json"))
        else:
            paths = sorted(self.root.glob("*/*.json")) if self.root.is_dir() else []
        found = []
        for path in paths:
            record = self._load(path)
            if record is not None and (cell_id is None or record["cell_id"] == cell_id):
                found.append((path, record))
        found.sort(key=lambda entry: (record_time(entry[1]), entry[0].name))
        return found

    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Every readable record, oldest first (by finished_at, else started_at)."""
        return (record for _, record in self.entries())

    def records_for(self, cell_id: str) -> list[dict[str, Any]]:
        """Every record of `cell_id`, oldest first."""
        return [record for _, record in self.entries(cell_id)]

    def latest(self, cell_id: str) -> dict[str, Any] | None:
        """The newest record of `cell_id`, whatever its status; None if it never ran."""
        records = self.records_for(cell_id)
        return records[-1] if records else None

    def find_completed(self, cell_id: str, fingerprint: str) -> dict[str, Any] | None:
        """The newest ok record of `cell_id` with this config fingerprint: the runner skips such cells."""
        current = self.current(cell_id, fingerprint)
        return current if current is not None and current.get("status") == "ok" else None

    def current(self, cell_id: str, fingerprint: str, records: list[dict[str, Any]] | None = None
                ) -> dict[str, Any] | None:
        """The record that stands for `cell_id` under this fingerprint: its newest ok record, else its newest
        record of any status; None when it has none. `records` (the cell's records, oldest first) spares a read."""
        matching = [r for r in (self.records_for(cell_id) if records is None else records)
                    if r.get("fingerprint") == fingerprint]
        ok = [r for r in matching if r.get("status") == "ok"]
        return (ok or matching or [None])[-1]

    def find(self, query: str) -> dict[str, Any]:
        """The newest record for a cell id, a unique prefix of one, or a record file path (`harness show`)."""
        candidate = Path(query)
        if candidate.suffix == ".json" and candidate.is_file():
            record = self._load(candidate)
            if record is None:
                raise UsageError(f"{query} is not a readable result record ({self._problems[candidate]})")
            return record
        latest: dict[str, dict[str, Any]] = {}
        for _, record in self.entries():
            latest[record["cell_id"]] = record
        if query in latest:
            return latest[query]
        matches = sorted(cell for cell in latest if cell.startswith(query))
        if len(matches) == 1:
            return latest[matches[0]]
        if matches:
            shown = "\n  ".join(matches[:20]) + ("\n  ..." if len(matches) > 20 else "")
            raise UsageError(
                f"{query!r} matches {len(matches)} cells in {self.root}; give more of the id:\n  {shown}"
            )
        if not latest:
            raise UsageError(
                f"no result records in {self.root}; run `harness run` first or pass --results DIR"
            )
        close = difflib.get_close_matches(query, list(latest), n=5, cutoff=0.4)
        hint = ("; close matches:\n  " + "\n  ".join(close)) if close else ""
        raise UsageError(f"no cell {query!r} among the {len(latest)} cells in {self.root}{hint}")
