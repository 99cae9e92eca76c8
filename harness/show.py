"""Renders one result record as text for `harness show`: config, seeds, environment, metrics, curve."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tabulate import tabulate


def human_bytes(n: float | None) -> str:
    """`1536` -> `1.5 KiB`; None -> `-`."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable


def _num(value: Any, spec: str = ".4g") -> str:
    ok = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
    return format(value, spec) if ok else "-"


def _kv(pairs: list[tuple[str, Any]]) -> str:
    rows = [(k, v) for k, v in pairs if v or v == 0]  # drop None, "", {}; keep 0 and False
    return tabulate(rows, tablefmt="plain", disable_numparse=True)


def _table(rows: list[tuple[Any, ...]], headers: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _thin(rows: list[Any], limit: int = 20) -> list[Any]:
    """At most `limit` rows, evenly spaced, always keeping the first and last."""
    if len(rows) <= limit:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in idx]


def config_pairs(record: Mapping[str, Any], *, mark: str = "  (grid)",
                 show: Callable[[Any], Any] = lambda value: value) -> list[tuple[str, Any]]:
    """Resolved hyper-parameters and suite config (values the grid set followed by `mark`), backend,
    budget, as (key, `show(value)`) pairs: for `harness show` and the report's cell pages."""
    cell, config = record.get("cell") or {}, record.get("config") or {}
    pairs: list[tuple[str, Any]] = []
    for kind, grid_key, key in (("algorithm", "hparams", "hparams"), ("suite", "suite_config", "config")):
        spec = config.get(kind) or {}
        name, chosen = spec.get("name", cell.get(kind, "?")), set(cell.get(grid_key) or {})
        pairs.append((kind, name))
        pairs += [(f"{name}.{k}", f"{show(v)}{mark}" if k in chosen else show(v))
                  for k, v in (spec.get(key) or {}).items()]
    pairs.append(("backend", config.get("backend", cell.get("backend"))))
    budget = config.get("budget") or cell.get("budget") or {}
    return pairs + [(f"budget.{k}", show(v)) for k, v in budget.items()]


def _environment_pairs(env: Mapping[str, Any]) -> list[tuple[str, Any]]:
    cpu, git, torch = env.get("cpu") or {}, env.get("git"), env.get("torch")
    if env.get("cuda"):
        torch = f"{torch} (CUDA {env['cuda']}, cuDNN {env.get('cudnn')})"
    threads = f"{cpu.get('logical_cpus')} logical CPUs, {cpu.get('torch_threads')} torch threads"
    return [
        ("python", env.get("python")),
        ("platform", env.get("platform")),
        ("torch", torch),
        ("cpu", cpu and f"{cpu.get('model')} ({threads})"),
        ("gpu", env.get("gpu")),
        ("git", git and git.get("sha", "?")[:12] + (" (dirty)" if git.get("dirty") else "")),
        ("date", env.get("date")),
    ]


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (`model.batch_norm`); lists of dicts item by item (`archives.0.path`)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return [pair for i, v in enumerate(value) for pair in _flatten(v, f"{prefix}.{i}")]
    return [(prefix, ", ".join(map(str, value)) if isinstance(value, list) else value)]


def format_record(record: Mapping[str, Any], path: Path | None = None) -> str:
    """A multi-section, human-readable account of one record, for `harness show`."""
    execution = ", ".join(f"{k}={v}" for k, v in (record.get("execution") or {}).items())
    head = [("cell", record.get("cell_id")), ("grid", (record.get("cell") or {}).get("grid"))]
    head += [(k, record.get(k)) for k in ("status", "reason", "fingerprint", "started_at", "finished_at")]
    out = [_kv([*head, ("execution", execution), ("file", path and str(path))])]

    def section(title: str, body: str) -> None:
        out.append(f"\n{title}\n{'-' * len(title)}\n{body}")

    section("Configuration", _kv(config_pairs(record)))
    section("Seeds", _kv(list((record.get("seeds") or {}).items())))
    code = dict(record.get("code_version") or {})
    plugins = [(f"plugin {k}", v) for k, v in (code.pop("plugins", None) or {}).items()]
    section("Code", _kv([*code.items(), *plugins]))
    section("Environment", _kv(_environment_pairs(record.get("environment") or {})))
    metric = record.get("metric")
    if metric:
        direction = "higher" if metric.get("higher_is_better") else "lower"
        body = _kv(
            [
                ("metric", f"{metric.get('name')} ({direction} is better)"),
                ("mean ± 95% CI", f"{_num(metric.get('mean'))} ± {_num(metric.get('ci95'))}"),
                ("std", _num(metric.get("std"))),
                ("test episodes", metric.get("n")),
                ("after step", metric.get("final_step")),
            ]
        )
        steps = _thin(metric.get("per_step") or [])
        if len(steps) > 1:
            rows = [(s.get("step"), _num(s.get("mean")), _num(s.get("ci95"))) for s in steps]
            body += "\n\n" + _table(rows, ["step", "mean", "ci95"])
        trajectory = metric.get("trajectory") or {}
        if trajectory:
            rows = [(e.get("label", name), _num(e.get("mean")), _num(e.get("ci95")))
                    for name, e in trajectory.items()]
            body += "\n\n" + _table(rows, ["per-episode trajectory metric", "mean", "ci95"])
        episodes = record.get("per_episode")
        if episodes:
            body += (f"\n\nper-episode values kept: {episodes.get('steps')} steps x {episodes.get('count')} "
                     f"{episodes.get('split')} episodes ({episodes.get('source')}, "
                     f"seed {episodes.get('seed')})")
        section("Metric", body)
    if record.get("measurements"):
        rows = [(e.get("label", name), _num(e.get("mean")), _num(e.get("ci95")), e.get("n"))
                for name, e in record["measurements"].items()]
        section("Measurements", _table(rows, ["measurement", "mean", "ci95", "episodes"]))
    if record.get("timings"):
        section(
            "Timings",
            _kv([(k, _num(v) if isinstance(v, float) else v) for k, v in record["timings"].items()]),
        )
    memory, params = record.get("memory") or {}, record.get("params")
    if memory or params is not None:
        peak = memory and f"{human_bytes(memory.get('peak_bytes'))} ({memory.get('kind', '?')})"
        section(
            "Size",
            _kv([("peak memory", peak), ("parameters", f"{params:,}" if params is not None else None)]),
        )
    if record.get("suite_info"):
        section("Suite", _kv(_flatten(record["suite_info"])))
    curve = _thin(record.get("curve") or [])
    if curve:
        keys = ("train_loss", "val_metric")
        rows = [
            (c.get("iteration"), *(_num(c.get(k)) for k in keys), _num(c.get("elapsed_s"), ".1f"))
            for c in curve
        ]
        body = _table(rows, ["iteration", "train loss", "val metric", "elapsed s"])
        if record.get("best"):
            best = record["best"]
            body += f"\n\nbest: iteration {best.get('iteration')}, val metric {_num(best.get('val_metric'))}"
        section("Learning curve", body)
    if record.get("traceback"):
        section("Traceback", str(record["traceback"]).rstrip())
    return "\n".join(out) + "\n"
