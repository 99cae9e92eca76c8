"""The `gaussian-nll` measurement itself (the `likelihood` plugin registers it; imported when a cell that
enables it builds it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from harness.measuring import Measurement


class GaussianNLL(Measurement):
    """Mean over the query targets (and output dimensions) of -log N(y; mu, sigma^2), in nats, and the
    fraction of targets inside each central interval mu +- z sigma, z the standard normal quantile of
    (1 + level) / 2. Computed in float64 where the device has it."""

    def _column(self, level: float) -> str:
        return f"coverage_{self.options.level_name(level)}"

    def columns(self) -> dict[str, tuple[str, bool | None]]:
        out: dict[str, tuple[str, bool | None]] = {"nll": ("NLL (nats)", False)}
        for level in self.options.coverage:
            out[self._column(level)] = (f"coverage of the {level:.0%} interval", None)
        return out

    def measure(self, predictor: Any, query_x: Tensor, query_y: Tensor,
                generator: torch.Generator) -> dict[str, float]:
        with torch.no_grad():
            predicted = predictor.distribution(query_x)
            if predicted is None:  # a point predictor: no likelihood (the module docstring says why)
                return {}
            mean, std = predicted
            if mean.shape != query_y.shape or std.shape != query_y.shape:
                raise ValueError(f"the gaussian-nll measurement needs a mean and a std shaped like the targets "
                                 f"{tuple(query_y.shape)}; predict_distribution gave {tuple(mean.shape)} and "
                                 f"{tuple(std.shape)}")
            exact = torch.float32 if query_y.device.type == "mps" else torch.float64
            mean, std, y = mean.to(exact), std.to(exact), query_y.to(exact)
            out = {"nll": float(-torch.distributions.Normal(mean, std).log_prob(y).mean())}
            for level in self.options.coverage:
                z = torch.special.ndtri(torch.tensor((1 + level) / 2, dtype=exact, device=y.device))
                out[self._column(level)] = float(((y - mean).abs() <= z * std).to(exact).mean())
        return out
