"""The import rules of the code base, checked by walking every module's syntax tree: the core never
imports a bundled plugin, no plugin module imports another plugin module, and the helper modules the
plugins share (plugins/fewshot/, backbones, hparams, ...) define no hooks and import no plugin module.

A plugin `pkg/name.py` keeps its heavy code in `pkg/_name.py` (loaded lazily, `harness.LazyFactory`): that
module is a helper like any other, so it imports no plugin module either (what both need lives in a
helper or the core), and the plugin module imports no torch, so `harness list` and grid checks never
load it."""

from __future__ import annotations

import ast
from pathlib import Path

from harness.registry import bundled_modules
from tests.conftest import REPO

PACKAGE = "metaharness_plugins"  # the import name of the plugins/ folder (pyproject's package-dir)


def module_names(folder: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file of every .py file under `folder`, imported as `package`."""
    names = {}
    for path in sorted(folder.rglob("*.py")):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def imported(path: Path, module: str, known: set[str]) -> set[str]:
    """Every module `path` (module `module`) imports, anywhere in it (functions included), relative
    imports resolved; `from package import name` counts as importing package.name when that is a module."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return found


def imported_at_import(path: Path) -> set[str]:
    """The modules `path` imports when it is imported: its top-level imports, not those inside functions
    or under `if TYPE_CHECKING:` (absolute imports only, which is all the plugins use)."""
    found = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def defines_hooks(path: Path) -> list[str]:
    return [node.name for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("harness_")]


def violations(core: dict[str, Path], plugins: dict[str, Path], plugin_modules: set[str]) -> list[str]:
    """What breaks the rules, one line each."""
    known = set(plugins) | set(core)
    # A plugin's implementation module (`_snail.py` beside `snail.py`) belongs to that plugin: another
    # plugin importing it is importing the plugin.
    owner = {module: module for module in plugin_modules}
    for module in plugin_modules:
        package, _, name = module.rpartition(".")
        if f"{package}._{name}" in plugins:
            owner[f"{package}._{name}"] = module
    found = []
    for module, path in core.items():
        for name in sorted(imported(path, module, known)):
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.append(f"{path}: the core imports the bundled plugin package ({name})")
    for module, path in plugins.items():
        names = imported(path, module, known)
        for name in sorted(names & plugin_modules - {module}):
            kind = "plugin" if module in plugin_modules else "helper"
            found.append(f"{path}: {kind} module {module} imports plugin module {name}")
        for name in sorted(n for n in names - plugin_modules if n in owner and owner[n] != owner.get(module)):
            kind = "plugin" if module in owner else "helper"
            found.append(f"{path}: {kind} module {module} imports {name}, the implementation of plugin "
                         f"{owner[name]}; shared code belongs in a helper module")
        if module in plugin_modules:
            heavy = sorted(n for n in imported_at_import(path) if n == "torch" or n.startswith("torch."))
            if heavy:
                found.append(f"{path}: plugin module {module} imports {', '.join(heavy)}; keep that in "
                             f"_{module.rpartition('.')[2]}.py")
        elif defines_hooks(path):
            found.append(f"{path}: helper module {module} defines hooks {', '.join(defines_hooks(path))}")
    return found


def test_the_code_base_keeps_its_import_rules() -> None:
    core = module_names(REPO / "harness", "harness")
    plugins = module_names(REPO / "plugins", PACKAGE)
    plugin_modules = set(bundled_modules())
    assert plugin_modules and plugin_modules <= set(plugins)  # every entry point is a module of plugins/
    assert {"metaharness_plugins.fewshot.pool", "metaharness_plugins.backbones"} <= set(plugins) - plugin_modules
    assert violations(core, plugins, plugin_modules) == []


def test_the_check_finds_each_kind_of_violation(tmp_path: Path) -> None:
    """The walk sees imports inside functions, relative imports and `from package import module`."""
    (tmp_path / "harness").mkdir()
    (tmp_path / "harness" / "runner.py").write_text("def f():\n    import metaharness_plugins.suites.a\n")
    plugins = tmp_path / "plugins"
    (plugins / "suites").mkdir(parents=True)
    (plugins / "suites" / "__init__.py").write_text("")
    (plugins / "suites" / "a.py").write_text("from . import b\n\ndef harness_register_task_suites():\n    return []\n")
    (plugins / "suites" / "b.py").write_text("from metaharness_plugins.helper import x\nimport torch.nn\n\n"
                                             "def f():\n    import torch\n")
    (plugins / "suites" / "_b.py").write_text("from metaharness_plugins.suites.b import x\nimport torch\n")
    (plugins / "suites" / "_c.py").write_text("from metaharness_plugins.suites._b import y\n")
    (plugins / "helper.py").write_text("from metaharness_plugins.suites import a\n\ndef harness_configure():\n    pass\n")
    found = violations(module_names(tmp_path / "harness", "harness"), module_names(plugins, PACKAGE),
                       {"metaharness_plugins.suites.a", "metaharness_plugins.suites.b"})
    text = "\n".join(found)
    assert "the core imports the bundled plugin package (metaharness_plugins.suites.a)" in text
    assert "plugin module metaharness_plugins.suites.a imports plugin module metaharness_plugins.suites.b" in text
    assert "helper module metaharness_plugins.helper imports plugin module metaharness_plugins.suites.a" in text
    assert "helper module metaharness_plugins.helper defines hooks harness_configure" in text
    assert "plugin module metaharness_plugins.suites.b imports torch.nn; keep that in _b.py" in text
    assert "helper module metaharness_plugins.suites._b imports plugin module metaharness_plugins.suites.b" in text
    assert ("helper module metaharness_plugins.suites._c imports metaharness_plugins.suites._b, the "
            "implementation of plugin metaharness_plugins.suites.b") in text
    assert len(found) == 7  # b importing the helper, _b and _c importing torch, are allowed
