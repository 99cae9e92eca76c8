"""Backends: availability with reasons, peak memory, synchronisation, and real CUDA cells where a GPU exists."""

from __future__ import annotations

import pytest
import torch

from harness.cells import run_one
from harness.specs import Budget, Cell
from metaharness_plugins.backends.cpu import CPUBackend
from metaharness_plugins.backends.cuda import CUDABackend
from metaharness_plugins.backends.mps import MPSBackend

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY = Budget(iterations=20, val_interval=10, val_episodes=4, test_episodes=8, threads=1)


PEAK_PROBE = """
import torch
from metaharness_plugins.backends.cpu import CPUBackend
backend = CPUBackend()
backend.reset_peak_memory()
before = backend.peak_memory_bytes()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
assert float(block.sum()) > 0
during = backend.peak_memory_bytes()
del block
backend.reset_peak_memory()
print(before, during, backend.peak_memory_bytes())
"""


def test_cpu_backend_peak_memory_sees_an_allocation():
    # In a fresh process: in this one, memory freed by earlier tests may be reused without growing RSS.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, timeout=120, check=True)
    before, during, after = map(int, out.stdout.split())
    assert CPUBackend().availability() == (True, "")
    assert during >= before + 60 * 2**20
    assert after < before + 60 * 2**20


def test_cpu_backend_configure_sets_threads_and_determinism():
    backend = CPUBackend()
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        settings = backend.configure(threads=1, deterministic=True)
        assert settings == {"threads": 1, "deterministic": True}
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


@pytest.mark.parametrize("backend_type", [CUDABackend, MPSBackend])
def test_gpu_backends_report_availability_with_a_reason(backend_type):
    ok, reason = backend_type().availability()
    expected = torch.cuda.is_available() if backend_type is CUDABackend else torch.backends.mps.is_available()
    assert ok == expected
    assert (reason == "") == ok


@pytest.mark.gpu
@needs_cuda
def test_cuda_backend_measures_allocator_peak():
    backend = CUDABackend()
    backend.reset_peak_memory()
    block = torch.ones(32 * 2**20 // 4, device=backend.device)
    backend.synchronize()
    assert backend.peak_memory_bytes() >= 32 * 2**20
    del block
    assert backend.describe()["gpu_name"]


@pytest.mark.gpu
@needs_cuda
def test_cuda_cell_runs_reproducibly_and_records_the_gpu(registry):
    cell = Cell("maml", (), "sinusoid", (("shots", 5),), "cuda", 0, TINY)
    first, second = run_one(cell, registry), run_one(cell, registry)
    assert first["status"] == "ok", first["reason"]
    assert first["environment"]["gpu"]
    assert first["memory"]["kind"] == "torch.cuda.max_memory_allocated" and first["memory"]["peak_bytes"] > 0
    assert first["metric"]["mean"] == second["metric"]["mean"]
    assert [c["val_metric"] for c in first["curve"]] == [c["val_metric"] for c in second["curve"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_cell_without_a_gpu_fails_clearly(registry):
    cell = Cell("maml", (), "sinusoid", (), "cuda", 0, TINY)
    record = run_one(cell, registry, in_process=True)
    assert record["status"] == "failed" and "unavailable" in record["reason"]
