"""The plugin manager: builtin specs, -p modules and files, blocking, fail-soft loading, duplicate names."""

from __future__ import annotations

import textwrap

import pytest

from harness.errors import PluginError, UsageError
from harness.registry import BUILTIN_PLUGINS, build_plugin_manager, bundled_modules, plugin_entry_points
from tests.conftest import FAULTY


def test_builtin_plugins_register_everything_the_foundation_promises(registry):
    assert {"maml", "fomaml", "metasgd", "reptile", "pretrain"} <= set(registry.algorithms)
    assert "sinusoid" in registry.suites
    assert {"cpu", "cuda", "mps"} <= set(registry.backends)
    assert {"smoke", "default", "full"} <= set(registry.grids)
    assert all(registry.infos[name.rsplit(".", 1)[-1]].origin == "builtin" for name in BUILTIN_PLUGINS)
    bundled = {name for name, info in registry.infos.items() if info.origin == "bundled"}
    assert {"maml", "sinusoid", "omniglot", "cpu", "l2l"} <= bundled
    assert registry.algorithms["fomaml"].plugin == "maml"


def test_cpu_is_always_available_and_auto_picks_the_best_available(registry):
    assert registry.backends["cpu"].available
    auto = registry.auto_backend()
    assert registry.backends[auto].available
    best = max(r.spec.priority for r in registry.backends.values() if r.available)
    assert registry.backends[auto].spec.priority == best


def test_unavailable_backend_says_why(registry):
    import torch

    cuda = registry.backends["cuda"]
    assert cuda.available == torch.cuda.is_available()
    if not cuda.available:
        assert "CUDA" in cuda.reason


def test_plugin_file_with_p_registers_its_algorithms(faulty_registry):
    assert {"raises", "nan", "sleeps", "healthy"} <= set(faulty_registry.algorithms)
    info = faulty_registry.infos["faulty_plugin"]
    assert info.origin == "-p" and info.status == "loaded"
    assert "raises" in info.provides


def test_blocking_a_builtin_plugin_removes_its_specs():
    reg = build_plugin_manager(["no:reptile"], entry_points=False)
    assert "reptile" not in reg.algorithms
    assert reg.infos["reptile"].status == "blocked"
    assert "maml" in reg.algorithms


def test_duplicate_names_are_an_error_naming_both_plugins(tmp_path):
    dup = tmp_path / "dupe.py"
    dup.write_text(textwrap.dedent("""
        from harness import AlgorithmSpec, hookimpl
        from metaharness_plugins.algorithms.maml import MAML, MAMLHparams
        @hookimpl
        def harness_register_algorithms():
            return [AlgorithmSpec("maml", MAML, MAMLHparams, {"regression"}, "a second maml")]
    """))
    with pytest.raises(PluginError, match=r"duplicate algorithm name 'maml'.*'maml'.*'dupe'"):
        build_plugin_manager([str(dup)], entry_points=False)


def test_misspelt_hook_fails_loudly(tmp_path):
    bad = tmp_path / "typo.py"
    bad.write_text("from harness import hookimpl\n@hookimpl\ndef harness_register_algoritms():\n    return []\n")
    with pytest.raises(PluginError, match="harness_register_algoritms.*Valid hooks:.*harness_register_algorithms"):
        build_plugin_manager([str(bad)], entry_points=False)


def test_p_plugin_that_does_not_exist_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        build_plugin_manager([str(tmp_path / "nope.py")], entry_points=False)
    with pytest.raises(UsageError, match="not found"):
        build_plugin_manager(["no_such_module_xyz"], entry_points=False)


def test_p_plugin_that_fails_to_import_is_a_plugin_error(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('needs a missing library')\n")
    with pytest.raises(PluginError, match="broken.py.*failed to import.*needs a missing library"):
        build_plugin_manager([str(broken)], entry_points=False)


def test_environment_plugins_fail_soft(tmp_path, monkeypatch):
    broken = tmp_path / "broken_env.py"
    broken.write_text("import definitely_not_installed_module\n")
    monkeypatch.setenv("HARNESS_PLUGINS", f"{broken},{FAULTY}")
    reg = build_plugin_manager(entry_points=False)
    assert reg.infos["broken_env"].status == "failed"
    assert "definitely_not_installed_module" in reg.infos["broken_env"].error
    assert "healthy" in reg.algorithms and "maml" in reg.algorithms


def test_registration_hook_that_raises_marks_only_that_plugin_failed(tmp_path):
    bad = tmp_path / "raising.py"
    bad.write_text("from harness import hookimpl\n@hookimpl\ndef harness_register_algorithms():\n"
                   "    raise ValueError('bad spec table')\n")
    reg = build_plugin_manager([str(bad)], entry_points=False)
    assert reg.infos["raising"].status == "failed" and "bad spec table" in reg.infos["raising"].error
    assert "maml" in reg.algorithms


def test_missing_optional_dependency_marks_spec_unavailable_with_hint(tmp_path):
    opt = tmp_path / "optional.py"
    opt.write_text(textwrap.dedent("""
        from harness import AlgorithmSpec, hookimpl
        from metaharness_plugins.algorithms.maml import MAML, MAMLHparams
        @hookimpl
        def harness_register_algorithms():
            return [AlgorithmSpec("needs-lib", MAML, MAMLHparams, {"regression"}, "x",
                                  requires=("not_a_real_dependency_xyz",))]
    """))
    reg = build_plugin_manager([str(opt)], entry_points=False)
    entry = reg.algorithms["needs-lib"]
    assert not entry.available
    assert "pip install not_a_real_dependency_xyz" in entry.reason


def test_unknown_names_suggest_the_closest(registry):
    with pytest.raises(UsageError, match=r"unknown algorithm 'mamll'.*Did you mean 'maml'.*Valid algorithms:.*reptile"):
        registry.algorithm("mamll")
    with pytest.raises(UsageError, match=r"unknown backend 'cdua'.*Did you mean 'cuda'.*auto"):
        registry.backend("cdua")
    with pytest.raises(UsageError, match=r"unknown suite 'sinusiod'.*Did you mean 'sinusoid'"):
        registry.suite("sinusiod")


def test_addoption_and_configure_hooks_reach_a_plugin(tmp_path):
    import json

    from tests.conftest import run_cli

    plugin = tmp_path / "optplugin.py"
    plugin.write_text(textwrap.dedent("""
        import json, pathlib
        from harness import hookimpl
        @hookimpl
        def harness_addoption(parser):
            parser.add_argument("--my-flag", default="unset")
        @hookimpl
        def harness_configure(config):
            pathlib.Path("configured.json").write_text(json.dumps({"flag": config.options.my_flag}))
    """))
    out = run_cli("run", "-p", str(plugin), "--my-flag", "on", "--dry-run", "--grid", "smoke", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "configured.json").read_text()) == {"flag": "on"}


def test_bundled_plugins_are_the_distributions_entry_points_and_load_without_autoload(monkeypatch):
    """The bundled plugins register as a third-party package does, through pyproject's entry points; the
    autoload switch, meant for other packages' plugins, leaves them loaded."""
    monkeypatch.setenv("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = build_plugin_manager()
    modules = bundled_modules()
    assert "metaharness_plugins.algorithms.maml" in modules and "metaharness_plugins.suites.omniglot" in modules
    assert "metaharness_plugins.fewshot" not in " ".join(modules)  # helper modules are not plugins
    bundled, _ = plugin_entry_points()
    assert [ep.value for ep in bundled] == modules
    assert {registry.infos[ep.name].origin for ep in bundled} == {"bundled"}
    assert all(registry.infos[ep.name].status == "loaded" for ep in bundled)
