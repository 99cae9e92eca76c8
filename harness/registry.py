"""The plugin manager: loads builtin, `-p`, entry-point and environment plugins, and holds their specs."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import PluginError, UsageError, unknown_name
from harness.specs import AlgorithmSpec, BackendSpec, ExecutorSpec, MeasurementSpec, TaskSuiteSpec

#: The core's own plugins (runner wrappers, bundled grids), loaded first.
BUILTIN_PLUGINS: tuple[str, ...] = ("harness.runner", "harness.grids")
#: The distribution the harness ships in: its `harness.plugins` entry points are the bundled plugins,
#: registered exactly as a third-party package registers its own, and loaded right after the core.
DISTRIBUTION = "metaharness"
ENTRY_POINT_GROUP = "harness.plugins"
#: Import names whose pip distribution is called otherwise, for install hints.
PIP_NAMES = {"PIL": "pillow", "cv2": "opencv-python", "sklearn": "scikit-learn", "yaml": "pyyaml"}
#: Set to 1 to skip entry-point plugins (like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD).
DISABLE_AUTOLOAD_ENV = "HARNESS_DISABLE_PLUGIN_AUTOLOAD"
#: Comma-separated modules or .py files loaded after entry points.
PLUGINS_ENV = "HARNESS_PLUGINS"


@dataclass
class PluginInfo:
    """What `harness list plugins` shows for one plugin."""

    name: str
    origin: str  # builtin | -p | entry point | HARNESS_PLUGINS
    target: str  # module name, file path or entry-point value
    status: str = "loaded"  # loaded | failed | blocked
    error: str = ""
    version: str = ""
    provides: list[str] = field(default_factory=list)


@dataclass
class Registered:
    """A spec together with the plugin that registered it and whether it can run here."""

    spec: Any
    plugin: str
    available: bool = True
    reason: str = ""


def _short_name(module: str) -> str:
    return module.rsplit(".", 1)[-1]


class HarnessPluginManager(pluggy.PluginManager):
    """pluggy's manager with the harness's load order, fail-soft loading and spec tables."""

    def __init__(self) -> None:
        super().__init__("harness")
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.blocked: set[str] = set()
        self.algorithms: dict[str, Registered] = {}
        self.suites: dict[str, Registered] = {}
        self.backends: dict[str, Registered] = {}
        self.executors: dict[str, Registered] = {}
        self.measurements: dict[str, Registered] = {}
        self.grids: dict[str, Registered] = {}
        self.load_args: dict[str, Any] = {}

    # --- loading ---

    def load_all(
        self,
        plugins: Sequence[str] = (),
        *,
        entry_points: bool | None = None,
        env_plugins: bool = True,
    ) -> HarnessPluginManager:
        """Load plugins in pytest's order: blocked, builtin, `-p`, entry points, HARNESS_PLUGINS.

        `plugins` are the `-p` values: a module name, a path to a .py file, or `no:NAME` to block.
        A `-p` plugin that cannot be loaded is a UsageError (the user asked for it); an entry-point
        or environment plugin that fails is recorded with its error and the rest still load.
        """
        self.load_args = {"plugins": list(plugins), "entry_points": entry_points, "env_plugins": env_plugins}
        wanted = []
        for value in plugins:
            if value.startswith("no:"):
                self.blocked.add(value[3:])
                self.set_blocked(value[3:])
            else:
                wanted.append(value)
        for module in BUILTIN_PLUGINS:
            self._load(module, "builtin", fail_soft=False)
        bundled, others = plugin_entry_points()
        self._load_entry_points(bundled, "bundled")
        for value in wanted:
            self._load(value, "-p", fail_soft=False)
        if entry_points is None:
            entry_points = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
        if entry_points:
            self._load_entry_points(others, "entry point")
        if env_plugins:
            for value in filter(None, (v.strip() for v in os.environ.get(PLUGINS_ENV, "").split(","))):
                self._load(value, PLUGINS_ENV, fail_soft=True)
        self.collect()
        self.check_pending()
        return self

    def _note(self, info: PluginInfo) -> None:
        self.infos[info.name] = info

    def _load(self, target: str, origin: str, *, fail_soft: bool) -> None:
        is_file = target.endswith(".py") or os.sep in target or "/" in target
        name = Path(target).stem if is_file else (_short_name(target) if origin == "builtin" else target)
        if is_file and name in self.infos and not self._same_file(name, target):
            # A file named like another plugin (say sinusoid.py beside the bundled sinusoid) is loaded
            # under its file name, never dropped for the other's.
            name = Path(target).name
            if name in self.infos and not self._same_file(name, target):
                message = (f"plugin file {target} cannot be loaded: plugin {name!r} ({self.infos[name].target}) "
                           "has the same name; rename one of the files")
                if not fail_soft:
                    raise UsageError(message)
                self._note(PluginInfo(name, origin, target, status="failed", error=message))
                return
        if name in self.blocked or self.is_blocked(name):
            self._note(PluginInfo(name, origin, target, status="blocked"))
            return
        if self.has_plugin(name):
            return
        try:
            module = _import_file(target, name) if is_file else importlib.import_module(target)
        except Exception as exc:
            if isinstance(exc, FileNotFoundError) or (isinstance(exc, ModuleNotFoundError) and exc.name == target):
                message = f"plugin {target!r} given by {origin} not found: {exc}"
                if not fail_soft:
                    raise UsageError(message + " (give an importable module name or a path to a .py file)") from None
            else:
                message = f"plugin {target!r} failed to import: {type(exc).__name__}: {exc}"
            if not fail_soft:
                raise PluginError(message + "\n" + _short_traceback()) from exc
            self._note(PluginInfo(name, origin, target, status="failed", error=message))
            return
        already = self.get_name(module)
        if already is not None:  # the same module under another name (a builtin given again by -p)
            self._note(PluginInfo(name, origin, target, status=f"already loaded as {already}"))
            return
        try:
            self.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            message = f"plugin {target!r} given by {origin} is invalid: {exc}"
            if not fail_soft:
                raise PluginError(message) from None
            self._note(PluginInfo(name, origin, target, status="failed", error=message))
            return
        self._note(PluginInfo(name, origin, target, version=_module_version(module)))

    def _same_file(self, name: str, target: str) -> bool:
        """Whether plugin `name` was loaded from the file `target` (the same -p given twice)."""
        known = self.infos[name].target
        return (known.endswith(".py") or "/" in known) and Path(known).resolve() == Path(target).resolve()

    def _load_entry_points(self, entry_points: Sequence[importlib.metadata.EntryPoint], origin: str) -> None:
        for ep in entry_points:
            dist = getattr(ep, "dist", None)
            # Bundled plugins are versioned by the harness itself (code_version["harness"]); their own
            # entry stays empty, as when they were loaded by module name, which keeps fingerprints.
            version = f"{dist.name} {dist.version}" if dist is not None and origin != "bundled" else ""
            if ep.name in self.blocked or self.is_blocked(ep.name):
                self._note(PluginInfo(ep.name, origin, ep.value, status="blocked", version=version))
                continue
            if self.has_plugin(ep.name):
                continue
            # pluggy's load_setuptools_entrypoints stops at the first broken plugin; load one by one.
            try:
                plugin = ep.load()
            except Exception as exc:
                self._note(
                    PluginInfo(ep.name, origin, ep.value, status="failed",
                               error=f"{type(exc).__name__}: {exc}", version=version)
                )
                continue
            try:
                self.register(plugin, name=ep.name)
            except pluggy.PluginValidationError as exc:
                self._note(PluginInfo(ep.name, origin, ep.value, status="failed", error=str(exc), version=version))
                continue
            self._note(PluginInfo(ep.name, origin, ep.value, version=version))

    def check_pending(self) -> None:
        """Fail loudly on a hookimpl that matches no hookspec (a misspelt `harness_*` name)."""
        try:
            super().check_pending()
        except pluggy.PluginValidationError as exc:
            valid = sorted(n for n in dir(hookspecs) if n.startswith("harness_"))
            raise PluginError(f"{exc}. Valid hooks: {', '.join(valid)}") from None

    # --- specs ---

    def collect(self) -> None:
        """Call the registration hooks plugin by plugin, so each spec knows who registered it."""
        tables: list[tuple[str, dict[str, Registered], type | None]] = [
            ("harness_register_backends", self.backends, BackendSpec),
            ("harness_register_task_suites", self.suites, TaskSuiteSpec),
            ("harness_register_algorithms", self.algorithms, AlgorithmSpec),
            ("harness_register_executors", self.executors, ExecutorSpec),
            ("harness_register_measurements", self.measurements, MeasurementSpec),
            ("harness_register_grids", self.grids, None),
        ]
        for hook_name, table, spec_type in tables:
            table.clear()
            hook = getattr(self.hook, hook_name)
            for impl in hook.get_hookimpls():  # registration order
                plugin = impl.plugin_name
                try:
                    result = impl.function()
                except Exception as exc:
                    self._fail(plugin, f"{hook_name} raised {type(exc).__name__}: {exc}")
                    continue
                items = _as_items(result, spec_type, plugin, hook_name)
                for name, spec in items:
                    if name in table:
                        kind = hook_name.removeprefix("harness_register_").rstrip("s").replace("_", " ")
                        raise PluginError(
                            f"duplicate {kind} name {name!r}: registered by plugin {table[name].plugin!r} "
                            f"and by plugin {plugin!r}; block one with -p no:NAME"
                        )
                    table[name] = Registered(spec, plugin)
                    info = self.infos.get(plugin)
                    if info is not None:
                        info.provides.append(name)
        for reg in [*self.algorithms.values(), *self.suites.values(), *self.executors.values(),
                    *self.measurements.values()]:
            missing = [m for m in reg.spec.requires if importlib.util.find_spec(m.split(".")[0]) is None]
            if missing:
                reg.available = False
                hint = reg.spec.install_hint or "pip install " + " ".join(PIP_NAMES.get(m, m) for m in missing)
                reg.reason = f"missing optional dependency {', '.join(missing)} ({hint})"
        for reg in self.backends.values():
            try:
                ok, reason = reg.spec.factory().availability()
            except Exception as exc:
                ok, reason = False, f"availability check raised {type(exc).__name__}: {exc}"
            reg.available, reg.reason = bool(ok), reason

    def _fail(self, plugin: str, error: str) -> None:
        info = self.infos.get(plugin)
        if info is not None:
            info.status, info.error = "failed", error
        self.unregister(name=plugin)

    def algorithm(self, name: str) -> Registered:
        return _lookup(self.algorithms, "algorithm", name)

    def suite(self, name: str) -> Registered:
        return _lookup(self.suites, "suite", name)

    def executor(self, name: str) -> Registered:
        return _lookup(self.executors, "executor", name)

    def measurement(self, name: str) -> Registered:
        return _lookup(self.measurements, "measurement", name)

    def backend(self, name: str) -> Registered:
        if name == "auto":
            return self.backends[self.auto_backend()]
        return _lookup(self.backends, "backend", name, extra=("auto",))

    def auto_backend(self) -> str:
        """The available backend with the highest priority (`cpu` always qualifies)."""
        available = [r for r in self.backends.values() if r.available]
        if not available:
            raise UsageError("no backend is available; is the cpu plugin blocked?")
        return max(available, key=lambda r: r.spec.priority).spec.name

    def grid_path(self, name: str) -> Path:
        return Path(_lookup(self.grids, "grid", name).spec)


#: `plugin_entry_points()` as a long-lived process found them once for its children (`remember_entry_points`).
_REMEMBERED_ENTRY_POINTS: tuple[list[importlib.metadata.EntryPoint], list[importlib.metadata.EntryPoint]] | None = None


def plugin_entry_points() -> tuple[list[importlib.metadata.EntryPoint], list[importlib.metadata.EntryPoint]]:
    """(the harness distribution's own `harness.plugins` entry points, every other package's), each sorted
    by name. A bundled plugin that fails to load is listed as failed, like any other entry point."""
    if _REMEMBERED_ENTRY_POINTS is not None:
        return _REMEMBERED_ENTRY_POINTS
    bundled, others = [], []
    names: dict[int, str] = {}  # a distribution's name, parsed from its metadata once, not once per entry point
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        key = id(dist)  # the entry points of one distribution share its object
        if dist is not None and key not in names:
            names[key] = dist.name
        (bundled if dist is not None and names[key] == DISTRIBUTION else others).append(ep)
    return bundled, others


def remember_entry_points() -> None:
    """Find the entry points now and reuse them in this process and its forks (the fork server calls this:
    the plugins its cells load are those installed when the run started)."""
    global _REMEMBERED_ENTRY_POINTS
    _REMEMBERED_ENTRY_POINTS = None
    _REMEMBERED_ENTRY_POINTS = plugin_entry_points()


def bundled_modules() -> list[str]:
    """Module names of the bundled plugins (for processes that import them ahead of time)."""
    return [ep.value.split(":", 1)[0] for ep in plugin_entry_points()[0]]


def _lookup(table: dict[str, Registered], kind: str, name: str, extra: Iterable[str] = ()) -> Registered:
    if name not in table:
        raise unknown_name(kind, name, list(table) + list(extra))
    return table[name]


def _as_items(result: Any, spec_type: type | None, plugin: str, hook: str) -> list[tuple[str, Any]]:
    if result is None:
        return []
    if spec_type is None:  # grids: {name: path}
        if not isinstance(result, dict):
            raise PluginError(f"plugin {plugin!r}: {hook} must return a dict of name -> path, got {type(result).__name__}")
        return [(str(k), str(v)) for k, v in result.items()]
    if not isinstance(result, (list, tuple)):
        raise PluginError(f"plugin {plugin!r}: {hook} must return a list of {spec_type.__name__}, got {type(result).__name__}")
    for spec in result:
        if not isinstance(spec, spec_type):
            raise PluginError(f"plugin {plugin!r}: {hook} returned {spec!r}, expected {spec_type.__name__}")
    return [(spec.name, spec) for spec in result]


def _import_file(path: str, name: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    module_name = "harness_plugin_file_" + re.sub(r"\W", "_", name)
    spec = importlib.util.spec_from_file_location(module_name, file.resolve())
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path} as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _module_version(module: Any) -> str:
    return str(getattr(module, "__version__", ""))


def _short_traceback() -> str:
    return "".join(traceback.format_exc(limit=-3))


def build_plugin_manager(plugins: Sequence[str] = (), *, entry_points: bool | None = None) -> HarnessPluginManager:
    """A manager with every plugin loaded and specs collected (the CLI's and the cell process's entry)."""
    return HarnessPluginManager().load_all(plugins, entry_points=entry_points)
