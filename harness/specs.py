"""Frozen spec objects that plugins register, the grid's Cell, and the TaskBatch episodes travel in."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import ParamError, unknown_name

if TYPE_CHECKING:  # torch is imported by what needs it, never by `harness list` or grid checks
    import torch

TASK_KINDS = ("classification", "regression", "optimisation")
#: The splits a suite samples: meta-training, validation (model selection) and meta-test episodes.
SPLITS = ("train", "val", "test")


class LazyFactory:
    """A factory named by "package.module:attribute", imported the first time it is called.

    A spec's `factory` may be such a string: registering the plugin then imports nothing heavy (torch,
    the implementation), so `harness list` and grid checks stay instant; the cell that builds the
    algorithm, suite or backend imports it."""

    def __init__(self, target: str) -> None:
        module, _, attribute = target.partition(":")
        if not module or not attribute or not all(part.isidentifier() for part in (*module.split("."), attribute)):
            raise ValueError(f"a factory named by a string must be 'package.module:attribute', got {target!r}")
        self.target = target
        self._resolved: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        """The named attribute, imported on first use."""
        if self._resolved is None:
            import importlib

            module, _, attribute = self.target.partition(":")
            self._resolved = getattr(importlib.import_module(module), attribute)
        return self._resolved

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyFactory({self.target!r})"


def forward_attributes(implementation: str) -> Callable[[str], Any]:
    """A module `__getattr__` that finds a missing name in module `implementation`, imported on first use.

    A plugin module that keeps its heavy code in a module of its own (`_name.py` beside it) sets
    `__getattr__ = forward_attributes(...)`, so `from plugin import TheClass` keeps working while
    registering the plugin imports nothing heavy."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        import importlib

        return getattr(importlib.import_module(implementation), name)

    return __getattr__


def _lazy_factory(spec: Any) -> None:
    if isinstance(spec.factory, str):
        object.__setattr__(spec, "factory", LazyFactory(spec.factory))
    elif not callable(spec.factory):
        raise ValueError(f"{type(spec).__name__} {spec.name!r}: factory must be callable or a "
                         f"'package.module:attribute' string, got {spec.factory!r}")


@dataclass(frozen=True)
class AlgorithmSpec:
    """An algorithm a plugin offers.

    `factory(hparams=..., model=..., suite=..., backend=...)` builds a `harness.base.Algorithm` (a
    "package.module:Class" string names one imported when first built: `LazyFactory`);
    `hparams` is a frozen dataclass type whose defaults are the paper's and whose fields the grid
    may override by name. `task_kinds` says which suites it can run on; the grid skips the rest.
    `requires` are modules it imports lazily: where one is missing it is unavailable, with
    `install_hint` (default: `pip install` of the missing modules) saying how to get them.
    `check(hparams, suite_name, suite_config)`, when given, returns "" if the algorithm can run with
    that suite configuration and otherwise why not (a finite difference needs two support points); the
    grid calls it for every pair before any cell runs, so it must be cheap and import nothing heavy.
    """

    name: str
    factory: Callable[..., Any] | str
    hparams: type
    task_kinds: frozenset[str]
    description: str
    paper: str = ""
    second_order: bool = False
    version: str = "1"
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    check: Callable[[Any, str, Any], str] | None = None

    def __post_init__(self) -> None:
        _check_spec(self, "algorithm")
        _lazy_factory(self)
        object.__setattr__(self, "task_kinds", frozenset(self.task_kinds))
        bad = self.task_kinds - set(TASK_KINDS)
        if bad:
            raise ValueError(f"algorithm {self.name!r}: unknown task kinds {sorted(bad)}; valid: {TASK_KINDS}")


@dataclass(frozen=True)
class TaskSuiteSpec:
    """A task suite a plugin offers: `factory(config)` builds a `harness.base.TaskSuite`.

    `config` is a frozen dataclass type (ways, shots, query, K, ...) whose `__post_init__` rejects
    impossible settings; the grid overrides its fields by name. `check(config)`, when given, returns
    "" if a configuration can run here and otherwise why not (data files missing, ...); the grid
    calls it before any cell runs, so it must be cheap.

    `episode_neutral` names config fields that do not change which episodes are drawn (the model, where
    the data lives, download policy): they are left out of the validation and test episodes' seed, so
    cells that differ only in them are still evaluated on identical episodes.
    """

    name: str
    factory: Callable[..., Any] | str
    config: type
    task_kind: str
    description: str
    paper: str = ""
    version: str = "1"
    requires: tuple[str, ...] = ()
    install_hint: str = ""
    check: Callable[[Any], str] | None = None
    episode_neutral: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_spec(self, "task suite")
        _lazy_factory(self)
        if self.task_kind not in TASK_KINDS:
            raise ValueError(f"suite {self.name!r}: unknown task kind {self.task_kind!r}; valid: {TASK_KINDS}")
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = [name for name in self.episode_neutral if name not in fields]
        if unknown:
            raise ValueError(f"suite {self.name!r}: episode_neutral names {', '.join(unknown)}, which are not "
                             f"fields of {self.config.__name__}; valid: {', '.join(sorted(fields))}")


@dataclass(frozen=True)
class BackendSpec:
    """A hardware backend: `factory()` builds a `harness.base.Backend`; higher `priority` wins `auto`."""

    name: str
    factory: Callable[[], Any] | str
    description: str
    priority: int = 0
    version: str = "1"

    def __post_init__(self) -> None:
        _lazy_factory(self)


@dataclass(frozen=True)
class ExecutorSpec:
    """An executor: how the cells of a run reach processes, GPUs and machines (`harness.executors`).

    `factory(options)` builds a `harness.executors.Executor` from the run's `ExecutorOptions`;
    `requires` are modules it imports lazily (Ray): where one is missing it is unavailable, with
    `install_hint` saying how to get it.
    """

    name: str
    factory: Callable[..., Any] | str
    description: str
    version: str = "1"
    requires: tuple[str, ...] = ()
    install_hint: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"an executor spec needs a non-empty string name, got {self.name!r}")
        _lazy_factory(self)


#: The option every measurement takes from the grid besides its own: adaptation steps to measure at besides
#: the final one (`steps = [0]`: the learner before adapting too; its columns end in `@0`).
MEASUREMENT_STEPS_KEY = "steps"


#: The most adaptation steps a measurement may name (a slip of the keyboard, not a study).
MAX_MEASURED_STEP = 10**6


def check_steps(steps: Any, name: str) -> list[int]:
    """A measurement's `steps`: one adaptation step or a non-empty list of distinct ones (0 is the state
    before adapting), sorted; a ParamError (key `steps`) otherwise."""
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = [steps]
    if (not isinstance(steps, (list, tuple)) or not steps or len(set(steps)) != len(steps)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_MEASURED_STEP
                       for s in steps)):
        raise ParamError(f"measurement {name!r}: {MEASUREMENT_STEPS_KEY} must be an adaptation step or a "
                         f"non-empty list of distinct ones (integers from 0, the state before adapting, to "
                         f"{MAX_MEASURED_STEP:,}), got {steps!r}", MEASUREMENT_STEPS_KEY)
    return sorted(steps)


@dataclass(frozen=True)
class MeasurementSpec:
    """An extra measurement of the adapted learners at meta-test (a grid enables it per cell).

    `factory(options=..., suite=...)` builds a `Measurement` in the cell's process (a "package.module:Class"
    string names one imported when first built: `LazyFactory`); `options` is a frozen dataclass type of
    the settings the grid may give (`{ name = "noise-robustness", sigmas = [0.01, 0.1] }`), whose
    `__post_init__` rejects impossible values. It may not have a field `steps`: the harness reads that key
    itself (adaptation steps measured besides the final one). `task_kinds` are the suites it applies to;
    on a cell of another kind it is left out. `requires` / `install_hint` as for algorithms; `version`
    enters the fingerprint of every cell that enables it.
    """

    name: str
    factory: Callable[..., Any] | str
    options: type
    description: str
    task_kinds: frozenset[str] = frozenset(TASK_KINDS)
    version: str = "1"
    requires: tuple[str, ...] = ()
    install_hint: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a measurement spec needs a non-empty string name, got {self.name!r}")
        if not dataclasses.is_dataclass(self.options):
            raise ValueError(f"measurement {self.name!r}: its options must be a dataclass type, "
                             f"got {self.options!r}")
        if MEASUREMENT_STEPS_KEY in {f.name for f in dataclasses.fields(self.options)}:
            raise ValueError(f"measurement {self.name!r}: its options may not have a field "
                             f"{MEASUREMENT_STEPS_KEY!r}; the harness reads that key itself (the steps to "
                             "measure at)")
        _lazy_factory(self)
        object.__setattr__(self, "task_kinds", frozenset(self.task_kinds))
        bad = self.task_kinds - set(TASK_KINDS)
        if bad or not self.task_kinds:
            raise ValueError(f"measurement {self.name!r}: task kinds must be a non-empty subset of "
                             f"{TASK_KINDS}, got {sorted(self.task_kinds)}")


def _check_spec(spec: Any, kind: str) -> None:
    if not spec.name or not isinstance(spec.name, str):
        raise ValueError(f"a {kind} spec needs a non-empty string name, got {spec.name!r}")
    params = spec.hparams if kind == "algorithm" else spec.config
    if not dataclasses.is_dataclass(params):
        raise ValueError(f"{kind} {spec.name!r}: its parameters must be a dataclass type, got {params!r}")


#: Bounds that catch a slip of the keyboard (three zeros too many) before a grid starts; no real study
#: needs more. Seeds are limited to what NumPy and every torch backend accept.
MAX_ITERATIONS = 10**9
MAX_EPISODES = 10**6
MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
MAX_MEMORY_LIMIT_MIB = 2**24  # 16 TiB


#: Field metadata for an option added after records were published, whose default is the behaviour those
#: records had: `field(default=..., metadata=ADDED_LATER)`. A cell's configuration (and so its fingerprint)
#: leaves such a field out while it is at its default, so adding the option re-runs nothing.
ADDED_LATER = {"added_later": True}


@dataclass(frozen=True)
class Budget:
    """How long a cell may meta-train, how it is evaluated, and what its process may use."""

    iterations: int = 1000
    time_limit: float | None = None  # seconds of meta-training; stops early, status stays ok
    timeout: float = 1800.0  # hard limit for the whole cell; past it the cell's processes are killed
    val_interval: int = 100
    # Early stopping: meta-training ends once this many validations in a row have not improved on the best
    # (the best parameters are the ones tested, as always); None trains for every iteration.
    patience: int | None = field(default=None, metadata=ADDED_LATER)
    val_episodes: int = 100
    test_episodes: int = 600
    test_seed: int = 0
    threads: int | None = None
    deterministic: bool = True
    # MiB of private memory the cell's process may allocate beyond what it holds when the cell starts
    # (Linux, RLIMIT_DATA); past it allocations fail and the cell's record says out of memory.
    memory_limit: int | None = field(default=None, metadata=ADDED_LATER)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(Budget)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _field_accepts(hints[f.name], value):
                raise ValueError(f"{f.name} must be {_type_name(hints[f.name])}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        for name, top in (("iterations", MAX_ITERATIONS), ("val_interval", MAX_ITERATIONS),
                          ("val_episodes", MAX_EPISODES), ("test_episodes", MAX_EPISODES)):
            value = getattr(self, name)
            if not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top:,}, got {value!r}")
        for name in ("time_limit", "timeout"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= MAX_TIMEOUT_S:
                raise ValueError(f"{name} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:,.0f} "
                                 f"(30 days), got {value!r}")
        if self.patience is not None and not 1 <= self.patience <= MAX_ITERATIONS:
            raise ValueError(f"patience must be a number of validations from 1 to {MAX_ITERATIONS:,} (meta-training "
                             f"stops after that many in a row without improvement), got {self.patience!r}")
        if self.patience is not None:
            # The first validation sets the best; a stop needs `patience` more before the last iteration.
            before_last = (self.iterations - 1) // self.val_interval
            if before_last < self.patience + 1:
                raise ValueError(
                    f"patience {self.patience} can never stop meta-training early: {self.iterations:,} iterations "
                    f"validated every {self.val_interval:,} hold {before_last} validation(s) before the last "
                    f"iteration, and a stop needs {self.patience + 1} (the first, then {self.patience} without "
                    f"improvement); raise iterations, or lower val_interval or patience")
        if not 0 <= self.test_seed <= MAX_SEED:
            raise ValueError(f"test_seed must be an integer from 0 to {MAX_SEED:,}, got {self.test_seed!r}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise ValueError(f"threads must be an integer from 1 to {MAX_THREADS} (torch CPU threads in the "
                             f"cell's process; this machine has {os.cpu_count()} logical CPUs), got {self.threads!r}")
        if self.memory_limit is not None and not 1 <= self.memory_limit <= MAX_MEMORY_LIMIT_MIB:
            raise ValueError(f"memory_limit must be a number of MiB from 1 to {MAX_MEMORY_LIMIT_MIB:,}, "
                             f"got {self.memory_limit!r}")


def check_ranges(
    params: Any,
    *,
    at_least_one: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
) -> None:
    """For a params dataclass's `__post_init__`: a ValueError naming the first field out of its range.

    `at_least_one` are counts (steps, batch sizes), `non_negative` may be zero (test steps),
    `positive` must be above zero (learning rates).
    """
    for names, bad, need in ((at_least_one, lambda v: v < 1, ">= 1"), (non_negative, lambda v: v < 0, ">= 0"),
                             (positive, lambda v: v <= 0, "> 0")):
        for name in names:
            value = getattr(params, name)
            if bad(value):
                raise ValueError(f"{name} must be {need}, got {value!r}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(_fmt(v) for v in value) + ")"
    return str(value)


def format_params(params: Mapping[str, Any]) -> str:
    """`{'b': 2, 'a': 1}` -> `[a=1,b=2]`; empty -> ``."""
    if not params:
        return ""
    return "[" + ",".join(f"{k}={_fmt(params[k])}" for k in sorted(params)) + "]"


@dataclass(frozen=True)
class Cell:
    """One grid cell: an algorithm configuration on a suite configuration, a backend and a seed.

    `hparams` and `suite_config` hold only the values the grid set; the runner resolves them
    against the specs' defaults. `measurements` are the extra measurements the grid enables, as
    (name, options as the grid gave them), sorted by name. The id is a pure function of the first six
    fields: budget, measurements and the rest say how the cell is run and measured, not which cell it is.
    """

    algorithm: str
    hparams: tuple[tuple[str, Any], ...]
    suite: str
    suite_config: tuple[tuple[str, Any], ...]
    backend: str
    seed: int
    budget: Budget = field(default_factory=Budget)
    grid: str = ""
    reported: str = ""  # the published number for this algorithm on this suite, from the grid
    measurements: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @property
    def algorithm_label(self) -> str:
        return self.algorithm + format_params(dict(self.hparams))

    @property
    def suite_label(self) -> str:
        return self.suite + format_params(dict(self.suite_config))

    @property
    def id(self) -> str:
        return f"{self.algorithm_label}/{self.suite_label}/{self.backend}/seed={self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The cell as JSON (records hold it); "measurements" only when some are enabled, so cells without
        read exactly as before measurements existed."""
        out = {
            "id": self.id,
            "algorithm": self.algorithm,
            "hparams": dict(self.hparams),
            "suite": self.suite,
            "suite_config": dict(self.suite_config),
            "backend": self.backend,
            "seed": self.seed,
            "budget": dataclasses.asdict(self.budget),
            "grid": self.grid,
            "reported": self.reported,
        }
        if self.measurements:
            out["measurements"] = [{"name": name, "options": _plain(dict(options))}
                                   for name, options in self.measurements]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            algorithm=data["algorithm"],
            hparams=tuple(sorted(data["hparams"].items())),
            suite=data["suite"],
            suite_config=tuple(sorted(data["suite_config"].items())),
            backend=data["backend"],
            seed=int(data["seed"]),
            budget=Budget(**data["budget"]),
            grid=data.get("grid", ""),
            reported=data.get("reported", ""),
            measurements=measurement_requests(
                (entry["name"], entry.get("options", {})) for entry in data.get("measurements", ())),
        )


def _frozen(value: Any) -> Any:
    """Lists (from TOML or JSON) as tuples, recursively, so a cell stays hashable and compares equal."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (JSON's form)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def measurement_requests(entries: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """(name, options mapping) pairs as `Cell.measurements` holds them: options sorted and frozen, by name."""
    return tuple(sorted((str(name), tuple(sorted((k, _frozen(v)) for k, v in dict(options).items())))
                        for name, options in entries))


@dataclass(frozen=True)
class TaskBatch:
    """Episodes with a leading task dimension: support_x is [tasks, n_support, ...] and so on."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        n = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"TaskBatch: {name} has {getattr(self, name).shape[0]} tasks, support_x has {n}")

    @property
    def num_tasks(self) -> int:
        return int(self.support_x.shape[0])

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    def task(self, i: int) -> TaskBatch:
        """Episode i with its task dimension kept (size 1)."""
        return TaskBatch(*(t[i : i + 1] for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    def slice(self, start: int, stop: int) -> TaskBatch:
        return TaskBatch(*(t[start:stop] for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


def _field_accepts(tp: Any, value: Any) -> bool:
    """Loose runtime type check of a TOML value against a dataclass field annotation."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_field_accepts(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list) or tp in (tuple, list):
        return isinstance(value, (list, tuple))
    if typing.get_origin(tp) is typing.Literal:
        return value in typing.get_args(tp)
    return True


def is_sequence_field(params_type: type, name: str) -> bool:
    """True when field `name` of the dataclass takes a list/tuple as one value (so [[...]] sweeps it)."""
    hints = typing.get_type_hints(params_type)
    tp = hints.get(name)
    candidates = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(c in (tuple, list) or typing.get_origin(c) in (tuple, list) for c in candidates)


def resolve_params(params_type: type, overrides: Mapping[str, Any], owner: str) -> Any:
    """Build the params dataclass from overrides, with errors naming the key and what is valid.

    Raises ParamError (a UsageError whose `key` is the offending field, when one is to blame) for an
    unknown name, a value of the wrong type, a non-finite number, or a value the dataclass rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(params_type)}
    hints = typing.get_type_hints(params_type)
    for key, value in overrides.items():
        if key not in fields:
            raise ParamError(str(unknown_name(f"parameter of {owner}", key, fields)), key)
        if not _field_accepts(hints[key], value):
            raise ParamError(f"{owner}: parameter {key!r} got {value!r}, expected {_type_name(hints[key])}", key)
        if _non_finite(value):
            raise ParamError(f"{owner}: parameter {key!r} got {value!r}, expected a finite number", key)
    values = {}
    for key, value in overrides.items():
        if hints[key] is float and isinstance(value, int):
            value = float(value)
        if isinstance(value, list):
            value = tuple(value)
        values[key] = value
    try:
        return params_type(**values)
    except (ValueError, TypeError) as exc:
        first = str(exc).split(" ", 1)[0]
        raise ParamError(f"{owner}: {exc}", first if first in fields else None) from None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


#: Field metadata of a hyper-parameter that changes how a result is computed, not what is computed
#: (`vmap_tasks`: the same meta-gradient, vectorised or looped): `field(default=True, metadata=RESULT_NEUTRAL)`.
#: Float rounding may differ between the two ways, so long trainings drift apart as two seeds would; the
#: method is the same. Leaderboards leave such settings out of row labels unless only they tell two rows
#: apart (the full configuration stays in the CSV and the footnotes).
RESULT_NEUTRAL = {"result_neutral": True}


def result_neutral(params_type: Any) -> frozenset[str]:
    """The names of a hyper-parameter dataclass's fields marked `RESULT_NEUTRAL`."""
    if not dataclasses.is_dataclass(params_type):
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(params_type) if f.metadata.get("result_neutral"))


def config_dict(params: Any) -> dict[str, Any]:
    """`params_dict(params)` as a cell's configuration and fingerprint hold it: without the `ADDED_LATER`
    fields that are at their defaults."""
    out = params_dict(params)
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        at_default = getattr(params, f.name) == default
        if f.metadata.get("added_later") and at_default:
            del out[f.name]
    return out


def params_dict(params: Any) -> dict[str, Any]:
    """A resolved params dataclass as a JSON-friendly dict."""
    out = {}
    for key, value in dataclasses.asdict(params).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out
