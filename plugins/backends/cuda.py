"""The CUDA backend: one NVIDIA GPU; peak memory is `torch.cuda.max_memory_allocated`."""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Any

from harness import Backend, BackendSpec, hookimpl

if TYPE_CHECKING:  # imported where used: registering the backend must not import torch
    import torch


#: Device nodes of a GPU torch.cuda can drive: NVIDIA's, AMD's (ROCm builds) and WSL's. Without any, no
#: torch build sees a device, and `harness list` need not import torch to say so.
GPU_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


class CUDABackend(Backend):
    name = "cuda"
    memory_kind = "torch.cuda.max_memory_allocated"

    def availability(self) -> tuple[bool, str]:
        if not any(glob.glob(pattern) for pattern in GPU_NODES):
            return False, "no CUDA device (no GPU device node: " + ", ".join(GPU_NODES) + ")"
        import torch

        if not torch.backends.cuda.is_built():
            return False, "this torch build has no CUDA support"
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, ""

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)

    def configure(self, *, threads: int | None, deterministic: bool) -> dict[str, Any]:
        import torch

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
        import torch

        torch.cuda.synchronize()

    def reset_peak_memory(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def peak_memory_bytes(self) -> int:
        import torch

        return int(torch.cuda.max_memory_allocated())

    def describe(self) -> dict[str, Any]:
        import torch

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
