"""The `harness` command as a user runs it, including the README's plugin examples, verbatim."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAULTY, REPO, run_cli

README = (REPO / "README.md").read_text()


def readme_example(name: str) -> str:
    """The fenced block after `<!-- readme-example: NAME -->` in the README."""
    match = re.search(rf"<!-- readme-example: {re.escape(name)} -->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no example {name!r}"
    return match.group(1)


def commands(name: str) -> list[list[str]]:
    return [shlex.split(line) for line in readme_example(name).splitlines() if line.strip()]


@pytest.fixture
def tiny_grid(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text('name = "tiny"\nbackends = ["cpu"]\n[budget]\niterations = 10\nval_interval = 5\nval_episodes = 3\n'
                    'test_episodes = 4\nthreads = 1\n[[block]]\nalgorithms = ["maml", "reptile"]\n'
                    'suites = [{ name = "sinusoid", shots = 5 }]\n')
    return path


def test_list_shows_plugins_with_origin_and_availability(tmp_path):
    out = run_cli("list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("maml", "fomaml", "metasgd", "reptile", "pretrain", "sinusoid", "smoke", "default", "full"):
        assert name in out.stdout
    assert "(builtin)" in out.stdout
    backends = run_cli("list", "backends", cwd=tmp_path).stdout
    assert "cpu: available" in backends
    import torch

    if not torch.cuda.is_available():
        assert re.search(r"cuda: unavailable \(.*CUDA.*\)", backends)
    plugins = run_cli("list", "plugins", "-p", FAULTY, cwd=tmp_path).stdout
    assert re.search(r"faulty_plugin\s+-p\s+loaded", plugins)


def test_run_writes_records_and_leaderboards_then_show_and_rebuild(tmp_path, tiny_grid):
    out = run_cli("run", "--grid", str(tiny_grid), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[2/2]" in out.stderr and "ETA" in out.stderr
    assert "MSE ↓" in out.stdout and "maml" in out.stdout and "reptile" in out.stdout
    records = list((tmp_path / "results").rglob("*.json"))
    assert len(records) == 2
    assert all(json.loads(p.read_text())["execution"]["exclusive"] is True for p in records)
    board = tmp_path / "leaderboards" / "tiny"
    assert {p.suffix for p in board.iterdir()} >= {".md", ".csv", ".tex"}

    dry = run_cli("run", "--grid", str(tiny_grid), "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0 and dry.stdout.count("done (has record") == 2
    again = run_cli("run", "--grid", str(tiny_grid), cwd=tmp_path)
    assert "0 cells run, 2 reused" in again.stdout
    shared = run_cli("run", "--grid", str(tiny_grid), "--shared-machine", "--algorithm", "maml",
                     "--results", "shared", "--leaderboards", "shared-boards", cwd=tmp_path)
    assert shared.returncode == 0, shared.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "shared").rglob("*.json")]
    assert record["execution"]["exclusive"] is False and "shared the machine" in shared.stdout
    assert len(list((tmp_path / "results").rglob("*.json"))) == 2

    shown = run_cli("show", "maml/sinusoid", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for section in ("maml/sinusoid[shots=5]/cpu/seed=0", "inner_lr", "mse", "peak", "curve"):
        assert section.lower() in shown.stdout.lower()

    rebuilt = tmp_path / "rebuilt"
    out = run_cli("leaderboard", "--out", str(rebuilt), "--format", "md,csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (rebuilt / "tiny").is_dir() and not list(rebuilt.rglob("*.tex"))
    assert (rebuilt / "tiny" / next(p.name for p in board.glob("*.csv"))).read_text() == next(board.glob("*.csv")).read_text()


def test_failing_cells_give_exit_code_1_and_records(tmp_path):
    grid = tmp_path / "faulty.toml"
    grid.write_text('name = "faulty"\nbackends = ["cpu"]\n[budget]\niterations = 8\nval_interval = 4\nval_episodes = 2\n'
                    'test_episodes = 2\ntimeout = 60\n[[block]]\nalgorithms = ["raises", "healthy"]\n'
                    'suites = [{ name = "sinusoid", shots = 5 }]\n')
    out = run_cli("run", "-p", FAULTY, "--grid", str(grid), cwd=tmp_path)
    assert out.returncode == 1
    assert "FAILED: raises/sinusoid[shots=5]/cpu/seed=0: RuntimeError: injected failure" in out.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "results").rglob("*.json"))
    assert statuses == ["failed", "ok"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--algorithm", "mamll"], "unknown algorithm 'mamll'. Did you mean 'maml'?"),
        (["run", "--suite", "sinusiod"], "unknown suite 'sinusiod'. Did you mean 'sinusoid'?"),
        (["run", "--backend", "gpu"], "unknown backend 'gpu'"),
        (["run", "--grid", "smok"], "unknown grid 'smok'. Did you mean 'smoke'?"),
        (["run", "--grid", "missing.toml"], "grid file missing.toml does not exist"),
        (["run", "--seeds", "0"], "expected a positive integer, got '0'"),
        (["run", "--format", "md,pdf"], "unknown format 'pdf'; valid: md, csv, latex"),
        (["run", "-p", "nope_plugin.py"], "not found"),
        (["show", "nothing/like/this"], "no result records in results"),
        (["leaderboard", "--results", "nowhere"], "results directory nowhere does not exist"),
    ],
)
def test_bad_input_is_rejected_before_any_cell_runs(tmp_path, args, message):
    out = run_cli(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr
    assert not (tmp_path / "results").exists()


def test_malformed_grid_and_bad_hyper_parameter_name_file_line_key(tmp_path):
    grid = tmp_path / "bad.toml"
    grid.write_text('name = "bad"\n[[block]]\nalgorithms = [{ name = "maml", inner_lrr = 0.1 }]\nsuites = ["sinusoid"]\n')
    out = run_cli("run", "--grid", str(grid), cwd=tmp_path)
    assert out.returncode == 2
    assert f"{grid}:3: key 'inner_lrr'" in out.stderr and "Did you mean 'inner_lr'" in out.stderr
    grid.write_text('name = "bad"\n[[block]]\nalgorithms = [maml]\n')
    out = run_cli("run", "--grid", str(grid), cwd=tmp_path)
    assert out.returncode == 2 and f"{grid}:3: malformed TOML" in out.stderr and "line 3" in out.stderr
    assert not (tmp_path / "results").exists()


def _as_test_command(argv: list[str]) -> list[str]:
    assert argv[0] == "harness"
    return argv[1:]


def test_readme_one_file_plugin_example_works_as_written(tmp_path):
    (tmp_path / "my_algo.py").write_text(readme_example("my_algo.py"))
    (argv,) = commands("run-file")
    out = run_cli(*_as_test_command(argv), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "my-algo" in out.stdout
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert record["status"] == "ok" and record["cell"]["algorithm"] == "my-algo"
    assert record["curve"][-1]["val_metric"] < record["metric"]["per_step"][0]["mean"] * 1.5


def test_readme_package_plugin_example_installs_and_runs(tmp_path):
    package = tmp_path / "my-harness-plugin"
    package.mkdir()
    (package / "my_algo.py").write_text(readme_example("my_algo.py"))
    (package / "pyproject.toml").write_text(readme_example("pyproject.toml"))
    install, list_plugins, run = commands("run-package")
    assert install[:2] == ["pip", "install"]
    # A real pip installation of the README's package, into its own folder (not this test
    # environment, which later tests share); no dependencies, as metaharness is already here.
    site = tmp_path / "site"
    import subprocess

    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--no-build-isolation", "--target", str(site), *install[2:]],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    assert list(site.glob("my_harness_plugin-0.1.0.dist-info"))
    env = {"PYTHONPATH": str(site), "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "0"}
    listed = run_cli(*_as_test_command(list_plugins), cwd=tmp_path, env=env)
    assert re.search(r"my_algo\s+entry point\s+loaded\s+my-harness-plugin 0.1.0\s+my-algo", listed.stdout), listed.stdout
    out = run_cli(*_as_test_command(run), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert record["status"] == "ok" and record["cell"]["algorithm"] == "my-algo"
    assert record["environment"]["plugins"].get("my-harness-plugin") == "0.1.0"


def test_broken_entry_point_is_listed_and_the_rest_run(tmp_path):
    package = tmp_path / "broken-plugin"
    package.mkdir()
    (package / "broken_mod.py").write_text("raise RuntimeError('this plugin is broken')\n")
    (package / "pyproject.toml").write_text(readme_example("pyproject.toml").replace("my-harness-plugin", "broken-plugin")
                                           .replace('my_algo = "my_algo"', 'broken = "broken_mod"')
                                           .replace('["my_algo"]', '["broken_mod"]'))
    import subprocess

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(site), "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "0"}
    listed = run_cli("list", "plugins", cwd=tmp_path, env=env)
    assert listed.returncode == 0
    assert re.search(r"broken\s+entry point\s+failed: RuntimeError: this plugin is broken", listed.stdout), listed.stdout
    assert "maml" in listed.stdout
    Path(tmp_path / "g.toml").write_text('[budget]\niterations = 4\nval_interval = 2\nval_episodes = 2\n'
                                         'test_episodes = 2\n[[block]]\nalgorithms = ["pretrain"]\nsuites = ["sinusoid"]\n')
    assert run_cli("run", "--grid", "g.toml", cwd=tmp_path, env=env).returncode == 0


@pytest.mark.parametrize("args", [["list"], ["--help"], ["run", "--help"], ["list", "algorithms"],
                                  ["run", "--grid", "BAD"], ["run", "--grid", "smoke", "--algorithm", "mam"]])
def test_listing_help_and_bad_input_never_import_torch(tmp_path, args):
    """What makes `harness list`, `--help` and grid errors instant: torch (and pandas, for grid errors) is
    imported only by what runs cells or writes tables. Timings live in the README, not in tests."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nseeds = 1\n[[block]]\nalgorithms = ["maml"]\nsuites = [{name = "sinusoid", shots = 0}]\n')
    args = [str(bad) if a == "BAD" else a for a in args]
    probe = ("import sys\nfrom harness import cli\ntry:\n    code = cli.main(%r)\nexcept SystemExit as exc:\n"
             "    code = exc.code\nprint('\\nloaded:', sorted(m for m in ('torch', 'pandas') if m in sys.modules))\n"
             "sys.exit(code)\n") % (args,)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == (2 if args[0] == "run" and "--help" not in args else 0), proc.stderr
    assert proc.stdout.rstrip().endswith("loaded: []"), proc.stdout[-300:] + proc.stderr
    if "BAD" in str(args) or str(bad) in args:
        assert "shots must be an integer from 1 to 100,000" in proc.stderr
