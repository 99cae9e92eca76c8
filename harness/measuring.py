"""Extra measurements of the adapted learners at meta-test: the base class a measurement plugin implements
(`Measurement`, built from a `harness.specs.MeasurementSpec`), and the runner's side (`Measuring`), which
calls a cell's enabled measurements on every test episode and summarises them for the record."""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness.base import Predictor
from harness.cells import stable_seed
from harness.measure import mean_ci95

if TYPE_CHECKING:
    import torch

    from harness.runner import CellContext


class Measurement(abc.ABC):
    """What a `MeasurementSpec.factory` builds: measures one adapted learner on one test episode.

    The runner builds it once per cell (`factory(options=..., suite=...)`), asks `columns()` once, and calls
    `measure` for every test episode on the learner after the final adaptation step, and after each of the
    grid's `steps` besides (columns then end in `@step`), outside `torch.no_grad`. The record gets, per
    column, the mean and 95% interval over the episodes of the values `measure` returned (an episode may
    leave a column out, say where a bound does not apply; `n` counts those that gave it); leaderboards
    show them as columns. The harness knows nothing of what is measured.
    """

    def __init__(self, options: Any, suite: Any) -> None:
        self.options = options
        self.suite = suite

    @abc.abstractmethod
    def columns(self) -> dict[str, tuple[str, bool | None]]:
        """{column name: (label, higher_is_better)}: every name `measure` may return, with how tables label
        it and which direction is better (None: neither; no arrow, no ranking)."""

    @abc.abstractmethod
    def measure(self, predictor: Any, query_x: torch.Tensor, query_y: torch.Tensor,
                generator: torch.Generator) -> Mapping[str, float]:
        """{column: value} for one adapted learner (`harness.base.Predictor`: `predictor(x)`,
        `predictor.state`, `predictor.algorithm`) on one episode's query set. `generator` is seeded from the
        test seed, the measurement and the episode alone: every algorithm of a grid draws the same noise."""


class Measuring:
    """A cell's enabled measurements (`MeasurementSpec`), called on every test episode's adapted learners.

    Each is built once (`factory(options=, suite=)`) and measures the learner after the final adaptation
    step (its columns' plain names) and after each of its `steps` besides (the same columns ending in
    `@step`: `@0` is the learner before adapting), with a generator seeded from the test seed, its name
    and the episode alone. `summary` gives the record's `measurements`: per column the mean and 95%
    t-interval over the episodes that gave a finite value.
    """

    def __init__(self, context: CellContext, algo: Any, final_step: int) -> None:
        self.algo, self.seed, self.seconds = algo, context.seeds["test"], 0.0
        self.entries: list[tuple[str, Any, list[int] | None]] = []
        self.labels: dict[str, tuple[str, bool | None]] = {}
        for spec, options, steps in context.measurements:
            too_far = [s for s in steps or () if s > final_step]
            if too_far:
                raise ValueError(f"measurement {spec.name!r}: steps names step {too_far[0]}, but this cell "
                                 f"adapts for {final_step} steps at test (steps 0 to {final_step} can be "
                                 "measured)")
            measurement = spec.factory(options=options, suite=context.suite)
            columns = measurement.columns()
            for column, (label, higher) in columns.items():
                for step in [None, *(steps or ())]:
                    shown = label if step is None else f"{label} @{step}"
                    self.labels[self._name(column, step)] = (shown, higher)
            self.entries.append((spec.name, measurement, steps))
        self.final_step = final_step
        self.values: dict[str, list[float]] = {name: [] for name in self.labels}

    @staticmethod
    def _name(column: str, step: int | None) -> str:
        return column if step is None else f"{column}@{step}"

    def __call__(self, episode: int, states: list[Any], query_x: torch.Tensor, query_y: torch.Tensor) -> None:
        import torch

        start = time.perf_counter()
        for name, measurement, steps in self.entries:
            for step in [None, *(steps or ())]:
                generator = torch.Generator().manual_seed(stable_seed("measure", name, self.seed, episode))
                state = states[self.final_step if step is None else step]
                values = measurement.measure(Predictor(self.algo, state), query_x, query_y, generator)
                for column, value in values.items():
                    key = self._name(column, step)
                    if key not in self.values:
                        raise RuntimeError(f"measurement {name!r} returned column {column!r}, which its "
                                           f"columns() does not declare ({', '.join(measurement.columns())})")
                    self.values[key].append(float(value))
        self.seconds += time.perf_counter() - start

    def summary(self) -> dict[str, dict[str, Any]]:
        """{column: {mean, ci95, n, label, higher_is_better}} for the columns some episode gave."""
        out = {}
        for key, values in self.values.items():
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                mean, ci, _ = mean_ci95(finite)
                label, higher = self.labels[key]
                out[key] = {"mean": mean, "ci95": ci, "n": len(finite), "label": label,
                            "higher_is_better": higher}
        return out
