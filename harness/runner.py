"""The work inside a cell's process: seed, meta-train with validation, meta-test on fixed episodes.

This module is also the builtin plugin `runner`: it implements `harness_run_cell` (the work) and two
wrappers around it (seeding and peak memory), so other plugins can wrap the same phase. Failures of
the cell's own code become statuses (`execute_cell`); where the process runs is `harness.cellprocess`'s.
"""

from __future__ import annotations

import math
import random
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from harness import episode_values
from harness.base import Predictor
from harness.cells import resolve_cell
from harness.measure import Stopwatch, mean_ci95
from harness.measuring import Measuring
from harness.results import capture_environment
from harness.specs import Cell, TaskBatch
from harness.storage import portable_paths, portable_text, portable_traceback

if TYPE_CHECKING:
    import torch

hookimpl = pluggy.HookimplMarker("harness")

#: Iterations at the start of meta-training timed apart (allocator warm-up, lazy init, caches).
MAX_WARMUP_ITERATIONS = 5


class Diverged(Exception):
    """A loss or metric became non-finite; `partial` keeps what was measured (curve, per-step metric)."""

    def __init__(self, reason: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.partial = partial or {}


@dataclass
class CellContext:
    """Everything `harness_run_cell` implementations need, resolved in the cell's process."""

    cell: Cell
    algorithm_spec: Any
    suite_spec: Any
    backend_spec: Any
    hparams: Any
    suite_config: Any
    seeds: dict[str, int]
    suite: Any = None
    backend: Any = None
    backend_settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: The enabled measurements, from `resolve_cell`: (spec, options, steps measured besides the final one).
    measurements: list[tuple[Any, Any, list[int] | None]] = field(default_factory=list)


def make_context(cell: Cell, registry: Any, resolved: dict[str, Any]) -> CellContext:
    """Build suite and backend and apply the backend's thread and determinism settings."""
    ctx = CellContext(
        cell=cell,
        algorithm_spec=registry.algorithm(cell.algorithm).spec,
        suite_spec=registry.suite(cell.suite).spec,
        backend_spec=registry.backend(cell.backend).spec,
        hparams=resolved["hparams"],
        suite_config=resolved["suite_config"],
        seeds=resolved["seeds"],
        measurements=[(registry.measurement(name).spec, options, steps)
                      for name, options, steps in resolved.get("measurements", ())],
    )
    ctx.backend = ctx.backend_spec.factory()
    ok, reason = ctx.backend.availability()
    if not ok:
        raise RuntimeError(f"backend {cell.backend!r} unavailable: {reason}")
    ctx.backend_settings = ctx.backend.configure(threads=cell.budget.threads, deterministic=cell.budget.deterministic)
    ctx.suite = ctx.suite_spec.factory(ctx.suite_config)
    return ctx


# --- the cell's work, as hook implementations -------------------------------------------------


@hookimpl(wrapper=True, tryfirst=True, specname="harness_run_cell")
def seed_everything(cell: Cell, context: CellContext) -> Iterator[None]:
    """Seed Python, NumPy and torch (all devices) from the cell seed before any model is built."""
    import torch

    seed = context.seeds["cell"]
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is optional for plugins; torch is what the harness seeds
        pass
    return (yield)


@hookimpl(wrapper=True, specname="harness_run_cell")
def measure_peak_memory(cell: Cell, context: CellContext) -> Iterator[None]:
    """Peak memory of the cell as its backend measures it (process RSS, CUDA allocator, MPS driver)."""
    context.backend.synchronize()
    context.backend.reset_peak_memory()
    result = None
    try:
        result = yield
    except Diverged as exc:  # what a diverged cell measured is kept in its record
        result = exc.partial
        raise
    finally:
        if result is not None:
            context.backend.synchronize()
            result["memory"] = {"peak_bytes": int(context.backend.peak_memory_bytes()),
                                "kind": context.backend.memory_kind}
    return result


@hookimpl(trylast=True)
def harness_run_cell(cell: Cell, context: CellContext) -> dict[str, Any]:
    """Meta-train within the budget keeping the best validated parameters, then meta-test."""
    import torch

    budget, suite, backend = cell.budget, context.suite, context.backend
    device = backend.device
    model = suite.build_model().to(device)
    algo = context.algorithm_spec.factory(hparams=context.hparams, model=model, suite=suite, backend=backend)
    train_gen = torch.Generator().manual_seed(context.seeds["cell"])
    val_batch = Episodes(suite, "val", budget.val_episodes, context.seeds["val"], device)
    test_batch = Episodes(suite, "test", budget.test_episodes, context.seeds["test"], device)
    better = (lambda a, b: a > b) if suite.higher_is_better else (lambda a, b: a < b)
    # Built, and their steps checked, before meta-training: a bad step costs nothing.
    measuring = Measuring(context, algo, eval_steps(algo, "test")) if context.measurements else None

    warmup_n = min(MAX_WARMUP_ITERATIONS, budget.iterations // 10)
    warmup, steps = Stopwatch(backend.synchronize), Stopwatch(backend.synchronize)
    curve: list[dict[str, Any]] = []
    best: dict[str, Any] = {"iteration": 0, "val_metric": None}
    best_state = algo.state_dict()
    stopped_by, val_s, losses, since_best = "iterations", 0.0, [], 0
    backend.synchronize()
    start = time.perf_counter()
    iteration = 0
    if not algo.meta_trains:
        stopped_by = "nothing to meta-train"
    for iteration in range(1, budget.iterations + 1 if algo.meta_trains else 1):
        batch = suite.sample(algo.meta_batch_size, train_gen, "train").to(device)
        with (warmup if iteration <= warmup_n else steps).region():
            loss = float(algo.meta_train_step(batch))
        if not math.isfinite(loss):
            raise Diverged(f"meta-training loss became {loss} at iteration {iteration}")
        losses.append(loss)
        out_of_time = budget.time_limit is not None and time.perf_counter() - start - val_s >= budget.time_limit
        if iteration % budget.val_interval == 0 or iteration == budget.iterations or out_of_time:
            t0 = time.perf_counter()
            val = _mean_final(evaluate(algo, val_batch, eval_steps(algo, "val")))
            val_s += time.perf_counter() - t0
            if not math.isfinite(val):
                raise Diverged(f"validation {suite.metric_name} became {val} at iteration {iteration}")
            recent = losses[-budget.val_interval:]
            curve.append({"iteration": iteration, "train_loss": sum(recent) / len(recent), "val_metric": val,
                          "elapsed_s": time.perf_counter() - start})
            if best["val_metric"] is None or better(val, best["val_metric"]):
                best = {"iteration": iteration, "val_metric": val}
                best_state = algo.state_dict()
                since_best = 0
            else:
                since_best += 1
        if out_of_time and iteration < budget.iterations:
            stopped_by = "time_limit"
            break
        if budget.patience is not None and since_best >= budget.patience and iteration < budget.iterations:
            stopped_by = "patience"
            break
    backend.synchronize()
    train_wall = time.perf_counter() - start
    algo.load_state_dict(best_state)

    # None when nothing was meta-trained (Algorithm.meta_trains False: no iteration to time).
    per_iteration = (steps.median if steps.samples else warmup.median) if iteration else None
    latency = Stopwatch(backend.synchronize)
    t0 = time.perf_counter()
    per_step = evaluate(algo, test_batch, eval_steps(algo, "test"), latency, measuring)
    test_s = time.perf_counter() - t0 - (measuring.seconds if measuring else 0.0)
    summary = []
    for step, values in enumerate(per_step):
        mean, ci, _ = mean_ci95(values)
        entry = {"step": step, "mean": mean, "ci95": ci}
        nonfinite = sum(not math.isfinite(v) for v in values)
        if nonfinite:  # episodes whose adaptation blew up at this step: said, not hidden
            entry["nonfinite_episodes"] = nonfinite
        summary.append(entry)
    mean, ci, std = mean_ci95(per_step[-1])
    per_episode = episode_values.encode(per_step, seed=context.seeds["test"],
                                        source="fixed" if test_batch.fixed else "sampled")
    result = {
        "metric": {"name": suite.metric_name, "label": suite.metric_label or suite.metric_name,
                   "higher_is_better": suite.higher_is_better, "mean": mean,
                   "ci95": ci, "std": std, "n": len(per_step[-1]), "final_step": len(per_step) - 1,
                   "per_step": summary, "episodes": "fixed" if test_batch.fixed else "sampled",
                   "trajectory": trajectory_summary(suite, per_step)},
        "algorithm_info": algo.describe(),
        "timings": {"meta_train_s": train_wall - warmup.total - val_s, "warmup_s": warmup.total,
                    "warmup_iterations": len(warmup.samples), "iterations": iteration, "stopped_by": stopped_by,
                    "validation_s": val_s, "time_per_iteration_s": per_iteration,
                    "adapt_latency_s": latency.median, "test_s": test_s},
        "params": algo.num_parameters(),
        # What the suite says about itself: data files and checksums, model, batch-norm mode, sampler.
        "suite_info": portable_paths(suite.describe()),
        "curve": curve,
        "best": best,
        "per_episode": per_episode,
    }
    if measuring is not None:
        result["measurements"] = measuring.summary()
        result["timings"]["measurement_s"] = measuring.seconds
    if not math.isfinite(mean):
        bad = sum(not math.isfinite(v) for v in per_step[-1])
        raise Diverged(f"test {suite.metric_name} is {mean}: {bad} of {len(per_step[-1])} test episodes "
                       f"non-finite after {len(per_step) - 1} adaptation steps", result)
    return result


#: Validation or test episodes larger than this (as float tensors) are drawn and evaluated in chunks.
EPISODE_CHUNK_BYTES = 256 << 20


class Episodes:
    """The validation or test episodes of a cell: the suite's fixed set (`TaskSuite.fixed_episodes`),
    else `n` drawn with a generator seeded by `seed`.

    Drawn episodes are held on the device as one batch when they fit in `EPISODE_CHUNK_BYTES` (600
    sinusoid or Omniglot episodes do). Larger sets (600 mini-ImageNet episodes are about 4 GB) are drawn
    again, chunk by chunk from the same generator stream, every time they are iterated: the same
    episodes each time, never all in memory at once. The chunk size depends only on the suite's
    episode size, so which episodes a cell sees depends only on (suite config, split, n, seed).
    """

    def __init__(self, suite: Any, split: str, n: int, seed: int, device: torch.device) -> None:
        import torch

        self.suite, self.split, self.n, self.seed, self.device = suite, split, n, seed, device
        fixed = suite.fixed_episodes(split)
        self.fixed = fixed is not None
        self.held: TaskBatch | None = fixed.to(device) if fixed is not None else None
        self.chunk = n
        if fixed is None:
            probe = suite.sample(1, torch.Generator().manual_seed(seed), split)
            per_episode = sum(t.numel() * t.element_size() for t in
                              (probe.support_x, probe.support_y, probe.query_x, probe.query_y))
            self.chunk = max(1, min(n, EPISODE_CHUNK_BYTES // max(1, per_episode)))
            if self.chunk == n:  # one draw of all n, exactly as a plain `sample(n, ...)`
                self.held = suite.sample(n, torch.Generator().manual_seed(seed), split).to(device)

    def __len__(self) -> int:
        return self.held.num_tasks if self.held is not None else self.n

    def __iter__(self) -> Iterator[TaskBatch]:
        import torch

        if self.held is not None:
            yield self.held
            return
        generator = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.chunk):
            yield self.suite.sample(min(self.chunk, self.n - start), generator, self.split).to(self.device)


def evaluate(algo: Any, batches: TaskBatch | Episodes, steps: int, latency: Stopwatch | None = None,
             measuring: Measuring | None = None) -> list[list[float]]:
    """Metric per test-time step (0..steps) per episode; `latency` times each episode's adaptation;
    `measuring` is given every episode's adapted states."""
    per_step: list[list[float]] = [[] for _ in range(steps + 1)]
    episode = 0
    for batch in [batches] if isinstance(batches, TaskBatch) else batches:
        for i in range(batch.num_tasks):
            sx, sy, qx, qy = batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]
            if latency is not None:
                with latency.region():
                    states = algo.adapt(sx, sy, steps)
            else:
                states = algo.adapt(sx, sy, steps)
            if len(states) != steps + 1:
                raise RuntimeError(f"{type(algo).__name__}.adapt returned {len(states)} states for {steps} "
                                   "steps; it must return steps + 1 (the state before adapting, then one per step)")
            # Not under no_grad: a suite may differentiate the adapted learner (TaskSuite.score).
            for step, state in enumerate(states):
                per_step[step].append(float(algo.suite.score(Predictor(algo, state), qx, qy)))
            if measuring is not None:
                measuring(episode, states, qx, qy)
            episode += 1
    return per_step


def eval_steps(algo: Any, split: str) -> int:
    """Adaptation steps on a `split` episode: the suite's horizon when it fixes one, else the algorithm's."""
    steps = algo.suite.adaptation_steps(split)
    return algo.test_steps if steps is None else int(steps)


def trajectory_summary(suite: Any, per_step: list[list[float]]) -> dict[str, dict[str, Any]]:
    """Mean and 95% interval over episodes of each of the suite's per-episode trajectory metrics."""
    by_name: dict[str, list[float]] = {}
    for episode in range(len(per_step[0]) if per_step else 0):
        for name, value in suite.trajectory_metrics([values[episode] for values in per_step]).items():
            by_name.setdefault(name, []).append(float(value))
    summary = {}
    for name, values in by_name.items():
        mean, ci, _ = mean_ci95(values)
        summary[name] = {"mean": mean, "ci95": ci, "n": len(values),
                         "label": suite.trajectory_labels.get(name, name.replace("_", " "))}
    return summary


def _mean_final(per_step: list[list[float]]) -> float:
    values = per_step[-1]
    return math.fsum(values) / len(values)


def execute_cell(cell: Cell, registry: Any) -> dict[str, Any]:
    """Run one cell here; never raises for the cell's own failures, returns status and reason."""
    resolved = resolve_cell(cell, registry)
    outcome: dict[str, Any] = {"status": "ok", "reason": "", "result": {}, "environment": {}}
    try:
        context = make_context(cell, registry, resolved)
        outcome["environment"] = capture_environment({**context.backend.describe(), **context.backend_settings})
        outcome["result"] = registry.hook.harness_run_cell(cell=cell, context=context)
    except Diverged as exc:
        outcome.update(status="diverged", reason=str(exc), result=exc.partial)
    except Exception as exc:
        outcome.update(status="failed", reason=portable_text(f"{type(exc).__name__}: {exc}"),
                       traceback=portable_traceback(traceback.format_exc()))
    if not outcome["environment"]:
        outcome["environment"] = capture_environment()
    return outcome


