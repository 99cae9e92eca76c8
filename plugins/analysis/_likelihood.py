"""The `gaussian-nll` measurement itself (the `likelihood` plugin registers it; imported when a cell that
enables it builds it)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from harness.measuring import Measurement


class GaussianNLL(Measurement):
    """Mean over the query points of -log N(y; mu, diag(sigma^2)) (summed over the output's dimensions, as
    the CNP's training loss), in nats, and the fraction of target values inside each central interval
    mu +- z sigma, z the standard normal quantile of (1 + level) / 2 (`statistics.NormalDist`). Computed in
    float64 where the device has it. An episode whose prediction is not finite, or whose std is not
    positive, gives NaN (the cell's summary counts finite values only)."""

    def _column(self, level: float) -> str:
        return f"coverage_{self.options.level_name(level)}"

    def columns(self) -> dict[str, tuple[str, bool | None]]:
        out: dict[str, tuple[str, bool | None]] = {"nll": ("NLL (nats)", False)}
        for level in self.options.coverage:
            out[self._column(level)] = (f"coverage of the {level * 100:g}% interval", None)
        return out

    def measure(self, predictor: Any, query_x: Tensor, query_y: Tensor,
                generator: torch.Generator) -> dict[str, float]:
        with torch.no_grad():
            predicted = predictor.distribution(query_x)
            if predicted is None:  # a point predictor: no likelihood (the plugin's docstring, likelihood.py, says why)
                return {}
            mean, std = predicted
            if mean.shape != query_y.shape or std.shape != query_y.shape:
                raise ValueError(f"the gaussian-nll measurement needs a mean and a std shaped like the targets "
                                 f"{tuple(query_y.shape)}; predict_distribution gave {tuple(mean.shape)} and "
                                 f"{tuple(std.shape)}")
            exact = torch.float32 if query_y.device.type == "mps" else torch.float64
            mean, std, y = mean.to(exact), std.to(exact), query_y.to(exact)
            if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and bool((std > 0).all())):
                return dict.fromkeys(self.columns(), math.nan)
            normal = torch.distributions.Normal(mean, std, validate_args=False)
            per_point = -normal.log_prob(y).reshape(len(y), -1).sum(dim=1)
            out = {"nll": float(per_point.mean())}
            for level in self.options.coverage:
                z = NormalDist().inv_cdf((1 + level) / 2)
                out[self._column(level)] = float(((y - mean).abs() <= z * std).to(exact).mean())
        return out
