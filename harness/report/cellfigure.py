"""The figure of one cell's page: its validation curve beside its meta-train loss, its test metric after
each adaptation step, and the histogram of its per-episode test metric, in panels side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from harness.report.plots import COLOURS, RC, finite, markevery, new_figure, scale_y, to_svg, wants_log


def cell_svg(record: Mapping[str, Any], episodes: Any = None) -> str | None:
    """One cell's figure: its validation curve and training loss, its metric after each test-time step,
    and the histogram of its per-episode metric (`episodes`: the [steps, count] array); None when the
    record has none of these."""
    import matplotlib

    metric = record.get("metric") or {}
    label = metric.get("label") or str(metric.get("name", "metric")).replace("_", " ")
    curve = [c for c in record.get("curve") or [] if finite(c.get("iteration"))]
    per_step = [
        s for s in metric.get("per_step") or [] if finite(s.get("mean")) and isinstance(s.get("step"), int)
    ]
    panels = [
        name
        for name, wanted in (
            ("curve", curve),
            ("steps", len(per_step) > 1),
            ("episodes", episodes is not None and getattr(episodes, "size", 0)),
        )
        if wanted
    ]
    if not panels:
        return None
    with matplotlib.rc_context({**RC, "axes.grid": False}):  # small panels: grid lines would only clutter
        figure, axes = new_figure(width=3.6 * len(panels), height=3.0, ncols=len(panels))
        for ax, panel in zip(axes, panels, strict=True):
            if panel == "curve":
                _cell_curve(ax, curve, label)
            elif panel == "steps":
                steps = [s["step"] for s in per_step]
                means = [s["mean"] for s in per_step]
                ax.plot(
                    steps,
                    means,
                    marker="o",
                    markersize=4,
                    markevery=markevery(len(steps)),
                    color=COLOURS[0],
                )
                errs = [s.get("ci95") for s in per_step]
                if all(finite(e) for e in errs):
                    ax.fill_between(
                        steps,
                        [m - e for m, e in zip(means, errs, strict=True)],
                        [m + e for m, e in zip(means, errs, strict=True)],
                        alpha=0.15,
                        color=COLOURS[0],
                        linewidth=0,
                        label="95% CI",
                    )
                    ax.legend(loc="best", frameon=False)
                scale_y(ax, means)
                ax.set_xlabel("test-time adaptation steps")
                ax.set_ylabel(f"test {label}")
                ax.set_title("metric after each test-time step")
                ax.xaxis.get_major_locator().set_params(integer=True)
            else:
                _cell_histogram(ax, episodes, label)
        return to_svg(figure)


def _cell_curve(ax: Any, curve: list[Mapping[str, Any]], label: str) -> None:
    iterations = [c["iteration"] for c in curve]
    val = [
        (i, c.get("val_metric"))
        for i, c in zip(iterations, curve, strict=True)
        if finite(c.get("val_metric"))
    ]
    if val:
        ax.plot(
            [p[0] for p in val],
            [p[1] for p in val],
            marker="o",
            markersize=4,
            color=COLOURS[0],
            label=f"validation {label}",
        )
        ax.set_ylabel(f"validation {label}")
        scale_y(ax, [p[1] for p in val])
    train = [
        (i, c.get("train_loss"))
        for i, c in zip(iterations, curve, strict=True)
        if finite(c.get("train_loss"))
    ]
    axes = [ax]
    if train:
        twin = ax.twinx() if val else ax
        axes.append(twin)
        twin.plot(
            [p[0] for p in train],
            [p[1] for p in train],
            linestyle="--",
            color=COLOURS[1],
            label="meta-train loss",
        )
        twin.set_ylabel("meta-train loss")
        if twin is not ax:
            twin.grid(False)
        if wants_log([p[1] for p in train]):
            twin.set_yscale("log")
    handles = [h for a in dict.fromkeys(axes) for h in a.get_legend_handles_labels()[0]]
    if handles:  # one legend for both axes
        axes[-1].legend(handles, [h.get_label() for h in handles], loc="best", frameon=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("meta-train iteration")
    ax.set_title("learning curve")


def _cell_histogram(ax: Any, episodes: Any, label: str) -> None:
    """The per-episode metric after the last step (and before adapting), on shared bins: logarithmic
    ones for positive values over orders of magnitude (optimisation losses)."""
    import numpy as np

    last = episodes[-1]
    shown = episodes[[0, -1]] if episodes.shape[0] > 1 else episodes[-1:]
    values = shown[np.isfinite(shown)]
    if not values.size:
        return
    count = min(30, max(5, int(math.sqrt(last.size))))
    if wants_log(values.tolist()):
        edges = np.geomspace(values.min(), values.max(), count + 1)
        ax.set_xscale("log")
    else:
        edges = np.histogram_bin_edges(values, count)
    if episodes.shape[0] > 1:
        ax.hist(episodes[0], bins=edges, alpha=0.45, color=COLOURS[7], label="before adaptation (step 0)")
    ax.hist(last, bins=edges, alpha=0.75, color=COLOURS[0], label=f"after step {episodes.shape[0] - 1}")
    ax.set_xlabel(f"test {label} per episode")
    ax.set_ylabel("episodes")
    ax.set_title(f"per-episode metric ({last.size} episodes)")
    ax.legend(loc="best", frameon=False)
