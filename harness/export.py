"""`harness export`: a whole result store as one CSV or parquet table, one row per record or per test
episode and step, for analysis in pandas or duckdb."""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import episode_values
from harness.errors import UsageError
from harness.files import atomic_write, check_output_dir
from harness.merge import record_id
from harness.results import ResultStore

PARQUET_HINT = "pip install metaharness[export]"


def _scalar(value: Any) -> Any:
    """A table cell: numbers, strings, booleans and None as they are, anything else as compact JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _flat(prefix: str, table: Mapping[str, Any] | None) -> dict[str, Any]:
    return {f"{prefix}.{key}": _scalar(value) for key, value in (table or {}).items()}


def record_row(record: Mapping[str, Any], file: str = "", current: bool | None = None) -> dict[str, Any]:
    """One record as one flat row: identity, full configuration, metric, per-step means, timings, memory,
    environment essentials, execution and versions (columns named `group.field`)."""
    cell, config = record["cell"], record.get("config") or {}
    metric, env = record.get("metric") or {}, record.get("environment") or {}
    cpu, git, execution = env.get("cpu") or {}, env.get("git") or {}, record.get("execution") or {}
    row: dict[str, Any] = {
        "record_id": record_id(record), "file": file, "cell_id": record["cell_id"],
        "algorithm": cell["algorithm"], "suite": cell["suite"], "backend": cell["backend"],
        "seed": cell["seed"], "grid": cell.get("grid", ""),
        "status": record["status"], "reason": record.get("reason", ""), "current": current,
        "fingerprint": record.get("fingerprint"), "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }
    row |= _flat("hparam", (config.get("algorithm") or {}).get("hparams") or cell.get("hparams"))
    row |= _flat("suite_config", (config.get("suite") or {}).get("config") or cell.get("suite_config"))
    row |= _flat("budget", config.get("budget") or cell.get("budget"))
    row |= {f"metric.{key}": metric.get(key) for key in
            ("name", "label", "higher_is_better", "mean", "ci95", "std", "n", "final_step", "episodes")}
    row |= {f"metric.mean@{entry['step']}": entry.get("mean") for entry in metric.get("per_step") or []}
    row |= {f"metric.ci95@{entry['step']}": entry.get("ci95") for entry in metric.get("per_step") or []}
    for name, entry in (metric.get("trajectory") or {}).items():
        row |= {f"trajectory.{name}.mean": entry.get("mean"), f"trajectory.{name}.ci95": entry.get("ci95")}
    for name, entry in (record.get("measurements") or {}).items():
        row |= {f"measurement.{name}.mean": entry.get("mean"), f"measurement.{name}.ci95": entry.get("ci95")}
    row |= _flat("timing", record.get("timings"))
    row |= {"memory.peak_bytes": (record.get("memory") or {}).get("peak_bytes"),
            "memory.kind": (record.get("memory") or {}).get("kind"), "params": record.get("params")}
    row |= _flat("algorithm_info", record.get("algorithm_info"))
    row |= _flat("suite_info", record.get("suite_info"))
    row |= {"execution.mode": execution.get("mode"), "execution.exclusive": execution.get("exclusive"),
            "execution.shared_with": execution.get("shared_with")}
    row |= {f"env.{key}": _scalar(env.get(key)) for key in
            ("python", "torch", "cuda", "cudnn", "harness", "platform", "machine", "gpu", "date")}
    row |= {"env.cpu_model": cpu.get("model"), "env.cpu_isa": cpu.get("isa"), "env.blas": cpu.get("blas"),
            "env.logical_cpus": cpu.get("logical_cpus"),
            "env.usable_cpus": cpu.get("usable_cpus"), "env.torch_threads": cpu.get("torch_threads"),
            "env.git_sha": git.get("sha"), "env.git_dirty": git.get("dirty")}
    row |= _flat("env.packages", env.get("packages")) | _flat("code", record.get("code_version"))
    row |= _flat("seeds", record.get("seeds"))
    return row


def _entries(store: ResultStore) -> list[tuple[Path, dict[str, Any], bool]]:
    """(path, record, current) of every readable record: `current` when it is the record the store picks
    for its cell and fingerprint (`ResultStore.current`: newest ok, else newest)."""
    entries = store.entries()
    by_cell: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, record in entries:
        by_cell[record["cell_id"]].append(record)
    picked = {id(store.current(cell, fp, records))
              for cell, records in by_cell.items() for fp in {r.get("fingerprint") for r in records}}
    return [(path, record, id(record) in picked) for path, record in entries]


def records_frame(store: ResultStore) -> Any:
    """Every readable record of `store` as a pandas DataFrame, one row each, oldest first."""
    import pandas as pd

    rows = [record_row(record, path.relative_to(store.root).as_posix(), current)
            for path, record, current in _entries(store)]
    return _tidy(pd.DataFrame(rows, dtype=object))


def episodes_frame(store: ResultStore) -> Any:
    """One row per (record, test-time step, test episode) of every record that keeps per-episode values:
    the record's identity, the episode's (split, seed, source, index), the step and the metric's value.
    Join with `records_frame` on `record_id` for the configuration."""
    import numpy as np
    import pandas as pd

    parts = []
    for _, record, current in _entries(store):
        array = episode_values.values(record)
        if array is None:
            continue
        entry, cell, metric = record["per_episode"], record["cell"], record.get("metric") or {}
        steps, count = array.shape
        ident = {"record_id": record_id(record), "cell_id": record["cell_id"], "algorithm": cell["algorithm"],
                 "suite": cell["suite"], "backend": cell["backend"], "seed": cell["seed"],
                 "grid": cell.get("grid", ""), "fingerprint": record.get("fingerprint"), "current": current,
                 "metric": metric.get("name"), "split": entry["split"], "episode_seed": entry["seed"],
                 "episode_source": entry["source"]}
        part = pd.DataFrame({"step": np.repeat(np.arange(steps), count),
                             "episode": np.tile(np.arange(count), steps), "value": array.reshape(-1)})
        for key, value in reversed(ident.items()):
            part.insert(0, key, value)
        parts.append(part)
    if not parts:
        raise UsageError(f"no record in {store.root} keeps per-episode values (records written before them, "
                         "or no ok records); export without --per-episode")
    return pd.concat(parts, ignore_index=True)


def _tidy(frame: Any) -> Any:
    """One type per column, so parquet can hold it: integers (nullable), booleans (nullable), floats,
    strings; a column mixing kinds (one hparam name, different types across algorithms) as JSON text."""
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        present = [v for v in frame[column] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        kinds = {bool if isinstance(v, bool) else int if isinstance(v, int) else
                 float if isinstance(v, float) else str if isinstance(v, str) else object for v in present}
        if kinds == {bool}:
            frame[column] = frame[column].astype("boolean")
        elif kinds == {int}:
            frame[column] = frame[column].astype("Int64")
        elif kinds and kinds <= {int, float}:
            frame[column] = frame[column].astype("float64")
        elif kinds and kinds != {str}:
            frame[column] = [v if v is None or isinstance(v, str) else json.dumps(v) for v in frame[column]]
    return frame


def write_frame(frame: Any, out: Path, fmt: str) -> None:
    """Write `frame` to `out` as CSV or parquet, whole or not at all, never over an existing file."""
    def write(handle: Any) -> None:
        if fmt == "parquet":
            frame.to_parquet(handle, engine="pyarrow", index=False)
        else:
            handle.write(frame.to_csv(index=False).encode("utf-8"))

    atomic_write(out, write, replace=False)


def _check_parquet() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError(f"--format parquet needs pyarrow, which is not installed: {PARQUET_HINT} "
                         "(or use --format csv)") from None


def cli_export(args: Any, registry: Any) -> int:
    """`harness export [--results DIR] [--format parquet|csv] [--out FILE] [--per-episode]`."""
    fmt = args.export_format
    out = args.out or Path(f"{'episodes' if args.per_episode else 'results'}.{fmt}")
    if fmt == "parquet":
        _check_parquet()
    if out.suffix != f".{fmt}":
        print(f"harness: warning: {out} does not end in .{fmt}; writing {fmt} anyway", file=sys.stderr)
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} already exists; export never overwrites a file: remove it or give --out")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"--out {out}: {out.parent} is not a folder")
    check_output_dir(out.parent, "--out folder")
    if not args.results.is_dir():
        raise UsageError(f"results directory {args.results} does not exist (run `harness run` first or pass "
                         "--results DIR)")
    store = ResultStore(args.results)
    frame = episodes_frame(store) if args.per_episode else records_frame(store)
    for problem in store.problems:
        print(f"harness: warning: {problem}", file=sys.stderr)
    if frame.empty:
        raise UsageError(f"no readable records in {args.results}")
    try:
        write_frame(frame, out, fmt)
    except FileExistsError:
        raise UsageError(f"{out} appeared while exporting; export never overwrites a file") from None
    what = "episode values" if args.per_episode else "records"
    print(f"{len(frame):,} rows ({what}) x {len(frame.columns)} columns written to {out}")
    return 0
