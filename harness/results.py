"""Versioned result records: environment capture, fingerprints, an append-only store, `harness show` text."""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import platform
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from harness.errors import HarnessError, UsageError

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed", "timeout", "diverged", "skipped", "unavailable")
PLUGIN_GROUP = "harness.plugins"
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


def capture_environment(backend_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Describe the software and machine a record was produced on (no hostname, for privacy).

    `backend_info` is the backend's `describe()`; its `gpu`, `gpu_name` or (when it is not the CPU)
    `device_name` becomes the GPU name. Never raises for a missing tool or package.
    """
    import torch

    from harness import __version__

    info = dict(backend_info or {})
    cudnn = None
    with contextlib.suppress(Exception):  # probing fails on broken CUDA installs; the record still matters
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    cpu = cpu_model()
    gpu = info.get("gpu") or info.get("gpu_name")
    if not gpu and info.get("device_name") and info.get("device_name") != cpu:
        gpu = info["device_name"]
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
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
        "cpu": {
            "model": cpu,
            "logical_cpus": os.cpu_count(),
            "usable_cpus": affinity,
            "torch_threads": torch.get_num_threads(),
        },
        "gpu": gpu,
        "backend": _jsonable(info, "backend_info"),
        "git": git_state(),
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


def validate_record(record: Any) -> None:
    """Raise HarnessError unless `record` has a schema, a cell id and a known status."""
    if not isinstance(record, Mapping):
        raise HarnessError(f"a result record must be a dict, got {type(record).__name__}")
    if record.get("schema") != SCHEMA_VERSION:
        raise HarnessError(
            f"record schema is {record.get('schema')!r}; this harness writes schema {SCHEMA_VERSION}"
        )
    if not isinstance(record.get("cell_id"), str) or not record["cell_id"]:
        raise HarnessError(f"record needs a non-empty string 'cell_id', got {record.get('cell_id')!r}")
    if record.get("status") not in STATUSES:
        raise HarnessError(
            f"record {record['cell_id']!r} has status {record.get('status')!r}; valid: {', '.join(STATUSES)}"
        )


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a synced temp file in the same directory and `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable; not every platform opens directories
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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

    def write(self, record: Mapping[str, Any]) -> Path:
        """Validate and append `record` as a new file (atomically); return its path."""
        validate_record(record)
        text = json.dumps(_jsonable(record, "record"), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        directory = self.cell_dir(record["cell_id"])
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        path = directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}.json"
        while path.exists():  # never replace an existing record, however unlikely the clash
            path = directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}.json"
        atomic_write_text(path, text)
        return path

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("cell_id"), str):
                raise ValueError("not a result record (no 'cell_id')")
            if not isinstance(record.get("schema"), int) or record["schema"] > SCHEMA_VERSION:
                raise ValueError(
                    f"schema {record.get('schema')!r} is not one this harness reads "
                    f"(1..{SCHEMA_VERSION}); upgrade the harness"
                )
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self._problems[path] = f"skipped: {exc}"
            return None
        self._problems.pop(path, None)
        return record

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
        for record in reversed(self.records_for(cell_id)):
            if record.get("status") == "ok" and record.get("fingerprint") == fingerprint:
                return record
        return None

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
