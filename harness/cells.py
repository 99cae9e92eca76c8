"""A cell before and after it runs: its resolved configuration, fingerprint and seeds, and its record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import harness
from harness.results import SCHEMA_VERSION, fingerprint
from harness.specs import MEASUREMENT_STEPS_KEY, Cell, check_steps, config_dict, resolve_params

FAILED_STATUSES = ("failed", "timeout", "diverged")


def stable_seed(*parts: Any) -> int:
    """A seed in [0, 2**31) that is a pure function of `parts` (JSON-serialisable)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


def resolve_cell(cell: Cell, registry: Any) -> dict[str, Any]:
    """Full config, code version, fingerprint and seeds of a cell; raises UsageError on bad params."""
    a_reg, s_reg, b_reg = registry.algorithm(cell.algorithm), registry.suite(cell.suite), registry.backend(cell.backend)
    hparams = resolve_params(a_reg.spec.hparams, dict(cell.hparams), f"algorithm {cell.algorithm!r}")
    suite_config = resolve_params(s_reg.spec.config, dict(cell.suite_config), f"suite {cell.suite!r}")
    config = {
        "algorithm": {"name": cell.algorithm, "hparams": config_dict(hparams)},
        "suite": {"name": cell.suite, "config": config_dict(suite_config)},
        "backend": cell.backend,
        "budget": config_dict(cell.budget),
    }
    measurements = resolve_measurements(cell, registry)
    m_regs = [registry.measurement(name) for name, _, _ in measurements]
    plugins = {}
    for reg in (a_reg, s_reg, b_reg, *m_regs):
        info = registry.infos.get(reg.plugin)
        plugins[reg.plugin] = info.version if info is not None else ""
    code_version = {
        "harness": harness.__version__,
        "algorithm": a_reg.spec.version,
        "suite": s_reg.spec.version,
        "backend": b_reg.spec.version,
        "plugins": plugins,
    }
    if measurements:  # only then: a cell without measurements keeps the configuration it always had
        config["measurements"] = [{"name": name, "options": config_dict(options), "steps": steps}
                                  for name, options, steps in measurements]
        code_version["measurements"] = {reg.spec.name: reg.spec.version for reg in m_regs}
    neutral = set(s_reg.spec.episode_neutral)
    episode_config = {k: v for k, v in config["suite"]["config"].items() if k not in neutral}
    episode_key = (cell.suite, episode_config, cell.budget.test_seed)
    seeds = {
        "base": cell.seed,
        "cell": stable_seed(cell.seed, cell.id),
        # Validation and test episodes depend on (suite configuration, test seed) alone, so every
        # algorithm, backend and seed of a grid is evaluated on the same episodes (paired comparison).
        "val": stable_seed("val", *episode_key),
        "test": stable_seed("test", *episode_key),
    }
    return {"config": config, "code_version": code_version, "fingerprint": fingerprint(config, code_version),
            "seeds": seeds, "hparams": hparams, "suite_config": suite_config, "measurements": measurements}


def resolve_measurements(cell: Cell, registry: Any) -> list[tuple[str, Any, list[int] | None]]:
    """[(name, options dataclass, steps)] of the cell's measurements; `steps` are those measured besides the
    final one (None: only the final one).
    Raises UsageError (ParamError) naming the measurement and the key for a bad name or option."""
    out = []
    for name, given in cell.measurements:
        spec = registry.measurement(name).spec
        options = dict(given)
        steps = options.pop(MEASUREMENT_STEPS_KEY, None)
        out.append((name, resolve_params(spec.options, options, f"measurement {name!r}"),
                    None if steps is None else check_steps(steps, name)))
    return out


def build_record(cell: Cell, resolved: dict[str, Any], outcome: dict[str, Any], *, mode: str,
                 started_at: str, finished_at: str, exclusive: bool = True, shared_with: int = 0) -> dict[str, Any]:
    """Assemble the versioned record written to the results store; `shared_with` counts the other
    harness runs seen on this machine while the cell ran."""
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "cell_id": cell.id,
        "cell": cell.to_dict(),
        "config": resolved["config"],
        "fingerprint": resolved["fingerprint"],
        "code_version": resolved["code_version"],
        "seeds": resolved["seeds"],
        "status": outcome["status"],
        "reason": outcome.get("reason", ""),
        "environment": outcome.get("environment", {}),
        "execution": {"mode": mode, "exclusive": exclusive, "shared_with": shared_with},
        "started_at": started_at,
        "finished_at": finished_at,
    }
    for key in ("metric", "timings", "memory", "params", "suite_info", "algorithm_info", "curve", "best",
                "per_episode", "measurements"):
        record[key] = outcome.get("result", {}).get(key)
    if record["timings"] is not None:
        record["timings"]["cell_s"] = (datetime.fromisoformat(finished_at) - datetime.fromisoformat(started_at)).total_seconds()
    if "traceback" in outcome:
        record["traceback"] = outcome["traceback"]
    return record


def now_iso() -> str:
    """The current UTC time in ISO 8601, as records give it."""
    return datetime.now(timezone.utc).isoformat()


def run_one(cell: Cell, registry: Any, *, in_process: bool = False, resolved: dict[str, Any] | None = None,
            exclusive: bool | Callable[[], tuple[bool, int]] = True) -> dict[str, Any]:
    """Run a cell (in its own process tree unless `in_process`) and return its record (not yet stored).

    `exclusive` False records that other work shared the machine (timings not comparable); a callable
    is asked once the cell has run and returns (exclusive, number of other runs seen meanwhile).
    """
    from harness.executors import CellJob

    job = CellJob(cell, resolved or resolve_cell(cell, registry), absolute_load_args(registry.load_args))
    record = job.run(executor="serial", registry=registry, in_process=in_process)
    alone, others = exclusive() if callable(exclusive) else (exclusive, 0)
    record["execution"].update(exclusive=alone, shared_with=others)
    return record


def absolute_load_args(load_args: dict[str, Any]) -> dict[str, Any]:
    """A registry's load arguments with plugin file paths made absolute (for a process started elsewhere)."""
    args = dict(load_args)
    args["plugins"] = [os.path.abspath(p) if p.endswith(".py") else p for p in load_args.get("plugins", [])]
    return args


def skipped_record(cell: Cell, registry: Any, status: str, reason: str) -> dict[str, Any]:
    """The record of a cell that does not run (impossible pair or unavailable backend/plugin)."""
    try:
        resolved = resolve_cell(cell, registry)
    except Exception:  # an unavailable plugin may not resolve; the record still says why
        resolved = {"config": {}, "fingerprint": "", "code_version": {"harness": harness.__version__}, "seeds": {}}
    now = now_iso()
    return build_record(cell, resolved, {"status": status, "reason": reason, "environment": {}},
                        mode="none", started_at=now, finished_at=now)
