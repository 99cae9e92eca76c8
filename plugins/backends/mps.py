"""The MPS backend (Apple silicon GPUs); peak memory is the MPS driver's allocated-memory figure."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from harness import Backend, BackendSpec, hookimpl

if TYPE_CHECKING:  # imported where used: registering the backend must not import torch
    import torch


class MPSBackend(Backend):
    name = "mps"
    memory_kind = "torch.mps.driver_allocated_memory (peak of samples)"

    def __init__(self) -> None:
        self._peak = 0

    def availability(self) -> tuple[bool, str]:
        if sys.platform != "darwin":
            return False, "MPS needs macOS on Apple silicon"
        import torch

        if not torch.backends.mps.is_built():
            return False, "this torch build has no MPS support (MPS needs macOS on Apple silicon)"
        if not torch.backends.mps.is_available():
            return False, "no MPS device (needs macOS 12.3+ on Apple silicon)"
        return True, ""

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("mps")

    def synchronize(self) -> None:
        import torch

        torch.mps.synchronize()
        # The MPS driver exposes only the current figure, so the peak is sampled at every sync
        # (the runner synchronises around each timed region).
        self._peak = max(self._peak, int(torch.mps.driver_allocated_memory()))

    def reset_peak_memory(self) -> None:
        import torch

        torch.mps.empty_cache()
        self._peak = int(torch.mps.driver_allocated_memory())

    def peak_memory_bytes(self) -> int:
        import torch

        return max(self._peak, int(torch.mps.driver_allocated_memory()))

    def describe(self) -> dict[str, Any]:
        return {"gpu_name": "Apple MPS"}


@hookimpl
def harness_register_backends() -> list[BackendSpec]:
    return [BackendSpec("mps", MPSBackend, "Apple-silicon GPU through Metal Performance Shaders", priority=10)]
