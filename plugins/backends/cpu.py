"""The CPU backend: always available; peak memory is the cell process's resident set (VmHWM)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness import Backend, BackendSpec, hookimpl

if TYPE_CHECKING:  # imported where used: registering the backend must not import torch
    import torch
from harness.measure import peak_rss_bytes, reset_peak_rss
from harness.results import cpu_model


class CPUBackend(Backend):
    name = "cpu"
    memory_kind = "process peak RSS"

    def availability(self) -> tuple[bool, str]:
        return True, ""

    @property
    def device(self) -> torch.device:
        import torch

        return torch.device("cpu")

    def reset_peak_memory(self) -> None:
        reset_peak_rss()

    def peak_memory_bytes(self) -> int:
        return peak_rss_bytes()

    def describe(self) -> dict[str, Any]:
        import torch

        return {"device_name": cpu_model(), "threads": torch.get_num_threads()}


@hookimpl
def harness_register_backends() -> list[BackendSpec]:
    return [BackendSpec("cpu", CPUBackend, "CPU via torch's default (OpenMP) threads", priority=0)]
