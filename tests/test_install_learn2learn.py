"""scripts/install_learn2learn.py, end to end in a fresh venv: learn2learn 0.2.0 built from PyPI's sdist.

Slow (about 3-4 minutes, 5.5 GB of disk in tmp_path while it runs): it installs torch twice and compiles
learn2learn's Cython extensions.  Skipped when the package index cannot be reached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_learn2learn.py"
CPU_TORCH = "torch==2.13.0"  # the CPU build the project uses: no PyPI torchvision imports beside it
# learn2learn imports torchvision; this pair imports (a CUDA build: it runs on the CPU as well).
TORCH_PAIR = ("torch==2.14.1", "torchvision==0.29.1")
EXIT_NO_DOWNLOAD = 3  # the script's status when the package index is unreachable
TIMEOUT = 1200
FIND_SPECS = "import importlib.util as u; print(u.find_spec({!r}), u.find_spec({!r}))"

MAML_STEP = """
import torch, learn2learn
from learn2learn.algorithms import MAML
assert learn2learn.__version__ == "0.2.0", learn2learn.__version__
torch.manual_seed(0)
model = torch.nn.Linear(3, 1)
maml = MAML(model, lr=0.1)
learner = maml.clone()
x, y = torch.randn(8, 3), torch.randn(8, 1)
before = torch.nn.functional.mse_loss(learner(x), y)
learner.adapt(before)
after = torch.nn.functional.mse_loss(learner(x), y)
after.backward()
assert torch.isfinite(after) and after.item() < before.item(), (before.item(), after.item())
assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()
# the Cython extensions the script regenerated: sample one 5-way 2-shot task
from learn2learn.data.transforms import NWays, KShots, LoadData, RemapLabels
data = torch.utils.data.TensorDataset(torch.randn(100, 3), torch.arange(100) % 10)
meta = learn2learn.data.MetaDataset(data)
transforms = [NWays(meta, 5), KShots(meta, 2), LoadData(meta), RemapLabels(meta)]
tasks = learn2learn.data.TaskDataset(meta, transforms)
X, Y = tasks.sample()
assert tuple(X.shape) == (10, 3) and sorted(set(Y.tolist())) == [0, 1, 2, 3, 4]
print("MAML-OK", before.item(), after.item())
"""


def index_reachable() -> str | None:
    """None if the package index answers for learn2learn, else why not."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/learn2learn/", timeout=20) as response:
            response.read(1)
    except OSError as exc:
        return f"package index {index} unreachable: {exc}"
    return None


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def checked(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_script(python: Path, cwd: Path) -> subprocess.CompletedProcess:
    proc = run([python, SCRIPT], cwd)
    if proc.returncode == EXIT_NO_DOWNLOAD:
        pytest.skip(f"package index unreachable from the script:\n{proc.stderr[-2000:]}")
    return proc


@pytest.mark.slow
def test_install_learn2learn_in_fresh_venv(tmp_path):
    reason = index_reachable()
    if reason:
        pytest.skip(reason)
    if shutil.disk_usage(tmp_path).free < 8 * 2**30:
        pytest.skip("needs about 8 GiB of free disk for a venv with a CUDA build of torch")
    venv_dir = tmp_path / "venv"
    python = venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    try:
        checked(run([sys.executable, "-m", "venv", venv_dir], tmp_path))
        checked(run([python, "-m", "pip", "install", "--quiet", CPU_TORCH], tmp_path))

        # A CPU-only torch: no torchvision imports beside it, so the script stops early, says why, and
        # leaves no broken torchvision (nor learn2learn) behind.
        proc = run_script(python, tmp_path)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "torchvision" in proc.stderr and "torch==2.14.1 torchvision==0.29.1" in proc.stderr
        probe = run([python, "-c", FIND_SPECS.format("torchvision", "learn2learn")], tmp_path)
        assert checked(probe).stdout.split() == ["None", "None"]

        # With a torch/torchvision pair that imports, it builds, installs and checks learn2learn 0.2.0.
        checked(run([python, "-m", "pip", "install", "--quiet", *TORCH_PAIR], tmp_path))
        proc = run_script(python, tmp_path)
        checked(proc)
        assert "sha256 matches" in proc.stdout and "learn2learn 0.2.0 installed" in proc.stdout

        # Idempotent: a second run does nothing.
        proc = checked(run_script(python, tmp_path))
        assert "nothing to do" in proc.stdout and "building" not in proc.stdout

        proc = checked(run([python, "-c", MAML_STEP], tmp_path))
        assert "MAML-OK" in proc.stdout
        # gsutil and qpth (in learn2learn's install_requires) are not needed, so not installed.
        extra = run([python, "-c", FIND_SPECS.format("qpth", "gslib")], tmp_path)
        assert checked(extra).stdout.split() == ["None", "None"]
    finally:
        shutil.rmtree(venv_dir, ignore_errors=True)  # 5.5 GB: do not keep it among pytest's old tmp dirs
