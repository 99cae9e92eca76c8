"""Shared fixtures: a plugin manager, tiny grids written to temp files, and the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.registry import build_plugin_manager

FIXTURES = Path(__file__).parent / "fixtures"
FAULTY = str(FIXTURES / "faulty_plugin.py")
REPO = Path(__file__).resolve().parents[1]
#: Real data shipped beside the repository (CI has it too): the Omniglot small background sets.
SHARED_DATA = REPO.parent / "shared" / "data"

# Suites find their data through HARNESS_DATA; decoded caches go to a folder of this test session.
if SHARED_DATA.is_dir():
    os.environ.setdefault("HARNESS_DATA", str(SHARED_DATA))
os.environ.setdefault("HARNESS_CACHE", tempfile.mkdtemp(prefix="harness-test-cache-"))
# The harness runs of this test session see each other (the concurrency tests need that), not the
# harness runs that may be going on elsewhere on the machine (which would make their timings shared).
os.environ["HARNESS_RUNS_DIR"] = tempfile.mkdtemp(prefix="harness-test-runs-")


@pytest.fixture(scope="session")
def registry():
    """Builtin plugins only (entry points off, so an installed third-party plugin cannot interfere)."""
    return build_plugin_manager(entry_points=False)


@pytest.fixture(scope="session")
def faulty_registry():
    return build_plugin_manager([FAULTY], entry_points=False)


TINY_BUDGET = """
[budget]
iterations = 12
val_interval = 6
val_episodes = 4
test_episodes = 6
timeout = 120
threads = 1
"""


@pytest.fixture
def write_grid(tmp_path):
    """Write a grid file from a TOML body (a tiny budget is appended unless the body has one)."""

    def write(body: str, name: str = "tiny") -> Path:
        path = tmp_path / f"{name}.toml"
        # CPU unless the body says otherwise: "auto" would pick a GPU where there is one.
        backends = "" if "backends" in body else 'backends = ["cpu"]\n'
        text = f'name = "{name}"\n' + backends + body + ("" if "[budget]" in body else TINY_BUDGET)
        path.write_text(text)
        return path

    return write


def run_main(cwd: Path, capsys, *args: str) -> tuple[int, str, str]:
    """`harness ARGS` in this process, in folder `cwd`: (exit code, stdout, stderr)."""
    from harness import cli

    before = os.getcwd()
    os.chdir(cwd)
    try:
        code = cli.main(list(args))
    finally:
        os.chdir(before)
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `harness ...` as a user would, in a fresh interpreter."""
    full_env = {**os.environ, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody here can write: permissions for a normal user; for root (who writes through
    permissions) a read-only file system mounted on it, where this machine allows mounting."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"root without permission to mount a read-only folder: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)
