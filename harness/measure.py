"""Measurement primitives: device-synchronised timers, peak memory of this process, 95% confidence intervals."""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

# Two-sided 97.5% quantiles of Student's t for small n-1; above 30 the normal 1.96 is within 2%.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
         18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
         26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042}


def t_quantile_975(dof: int) -> float:
    """Student-t 0.975 quantile for `dof` degrees of freedom (1.96 in the large-sample limit)."""
    if dof < 1:
        return math.nan
    if dof in _T975:
        return _T975[dof]
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # scipy is optional; the normal approximation is within 2% above 30 dof
        return 1.96 + 2.4 / dof


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, half-width of the 95% t-interval, sample std) of `values`; the CI is nan for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):  # a diverged episode: no meaningful interval
        return sum(values) / n, math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * std / math.sqrt(n), std


class Stopwatch:
    """Accumulates durations of regions bracketed by `sync()` so queued device work is counted."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.samples: list[float] = []

    @contextmanager
    def region(self) -> Iterator[None]:
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.samples.append(time.perf_counter() - start)

    @property
    def total(self) -> float:
        return math.fsum(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS watermark (Linux: /proc/self/clear_refs); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last `reset_peak_rss()`."""
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def current_rss_bytes() -> int:
    rss = _proc_status_kib("VmRSS")
    if rss is not None:
        return rss * 1024
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)
