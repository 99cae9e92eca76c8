"""The CUDA backend: one NVIDIA GPU; peak memory is `torch.cuda.max_memory_allocated`."""

from __future__ import annotations

import os
from typing import Any

import torch

from harness import Backend, BackendSpec, hookimpl


class CUDABackend(Backend):
    name = "cuda"
    memory_kind = "torch.cuda.max_memory_allocated"

    def availability(self) -> tuple[bool, str]:
        if not torch.backends.cuda.is_built():
            return False, "this torch build has no CUDA support"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)

    def configure(self, *, threads: int | None, deterministic: bool) -> dict[str, Any]:
        if deterministic:
            # cuBLAS needs a fixed workspace for deterministic GEMMs (CUDA docs, "Reproducibility");
            # set before the first cuBLAS call in this (the cell's own) process.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
        settings = super().configure(threads=threads, deterministic=deterministic)
        settings["cudnn_deterministic"] = deterministic
        return settings

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated())

    def describe(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.device)
        return {
            "gpu_name": props.name,
            "gpu_memory_bytes": int(props.total_memory),
            "gpu_capability": f"{props.major}.{props.minor}",
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
        }


@hookimpl
def harness_register_backends() -> list[BackendSpec]:
    return [BackendSpec("cuda", CUDABackend, "one NVIDIA GPU through CUDA", priority=20)]
