"""The figures of a leaderboard, drawn with matplotlib's object API (no pyplot state) and saved as small
SVG text: the metric against a cost with the Pareto front marked, validation learning curves, and the
metric against the number of test-time steps; and the drawing helpers `harness.report.cellfigure` shares."""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Text stays text (the browser draws it), ids are stable: small files, and a rebuilt report is identical.
RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "metaharness-report",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "path.simplify": True,
    "font.family": "DejaVu Sans",
}
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_MARKERS = ("o", "s", "^", "D", "v", "P")
_LEGEND_CHARS = 46
#: Up to this many legend entries go beside the axes; more go below them.
_LEGEND_BESIDE = 9
_GEOMETRY = re.compile(r'(\s(?:d|x|y|x1|x2|y1|y2|cx|cy|r|width|height|points|transform|viewBox)=")([^"]*)"')
_DIGITS = re.compile(r"(\d\.\d\d)\d+")
#: More rows than this in one figure and their interval bands would hide each other: lines only.
MAX_BANDS = 4
#: An axis goes logarithmic when its positive values span more than this factor.
_LOG_SPAN = 30.0


@dataclass(frozen=True)
class Series:
    """One table row in a figure: its label, its position in the table (which fixes its colour and
    marker in every figure of the table) and its values."""

    label: str
    index: int
    x: Sequence[float]
    y: Sequence[float]
    err: Sequence[float] | None = None


def style(index: int) -> dict[str, str]:
    """The colour and marker of row `index`: ten colours, then the next marker shape."""
    return {
        "color": COLOURS[index % len(COLOURS)],
        "marker": _MARKERS[(index // len(COLOURS)) % len(_MARKERS)],
    }


def finite(value: Any) -> bool:
    """Whether `value` is a finite int or float (not a bool, None, NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(xs: Sequence[float], ys: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices of the points that no other point dominates, by increasing x (the cost: lower is better).

    Point j dominates i when x_j <= x_i and y_j is at least as good as y_i, one of them strictly; points
    with a missing coordinate are on no front.
    """
    sign = 1.0 if higher_is_better else -1.0
    points = [
        (i, float(x), sign * float(y))
        for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        if finite(x) and finite(y)
    ]
    front = [
        i for i, x, y in points if not any(xj <= x and yj >= y and (xj < x or yj > y) for _, xj, yj in points)
    ]
    return sorted(front, key=lambda i: (float(xs[i]), -sign * float(ys[i])))


def _short(label: str) -> str:
    """At most `_LEGEND_CHARS` characters, cut in the middle: a label's end (`solver=rk4]`) often tells it
    from the next."""
    if len(label) <= _LEGEND_CHARS:
        return label
    head = (_LEGEND_CHARS - 1) // 2
    return label[:head] + "…" + label[len(label) - (_LEGEND_CHARS - 1 - head):]


def _legend_columns(labels: Sequence[str]) -> int:
    """Columns of a legend below the axes: three of up to 28 characters fit the figure's width, else two."""
    return 3 if max((len(label) for label in labels), default=0) <= 28 else 2


def wants_log(values: Sequence[float]) -> bool:
    """Whether the finite values are all positive and span more than `_LOG_SPAN` (a log axis then)."""
    shown = [v for v in values if finite(v)]
    if len(shown) < 2 or min(shown) <= 0:
        return False
    return max(shown) > _LOG_SPAN * min(shown)


def new_figure(width: float = 6.4, height: float = 3.8, ncols: int = 1) -> tuple[Any, Any]:
    """A figure (constrained layout) with one row of `ncols` axes: (figure, array of axes)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def to_svg(figure: Any) -> str:
    """The figure as minified SVG text, without the date or creator (a rebuilt report is identical)."""
    buffer = io.StringIO()
    figure.savefig(
        buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None}
    )
    return minify_svg(buffer.getvalue())


def minify_svg(svg: str) -> str:
    """matplotlib's SVG at about a third of its size, drawn the same: coordinates to 0.01 pt (a hundredth
    of a screen pixel), no metadata, no ids nothing refers to, no indentation, one short font stack."""
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"font-family: [^;\"]*", "font-family: 'DejaVu Sans', sans-serif", svg)
    svg = _GEOMETRY.sub(lambda m: m[1] + _DIGITS.sub(r"\1", m[2]) + '"', svg)  # never the text drawn
    svg = re.sub(r' transform="rotate\(-0 [^)]*\)"', "", svg)
    svg = re.sub(r'<g id="[^"]*">', "<g>", svg)
    svg = re.sub(r"\s*\n\s*", " ", svg)
    svg = re.sub(r">\s+<", "><", svg).strip()
    # A style that many elements repeat (grid lines, tick labels) becomes a class: one rule, short references.
    counts: dict[str, int] = defaultdict(int)
    for style_text in re.findall(r' style="([^"]*)"', svg):
        counts[style_text] += 1
    names = {text: f"s{i}" for i, text in enumerate(t for t, n in counts.items() if n > 1)}
    if names:
        svg = re.sub(r' style="([^"]*)"', lambda m: f' class="{names[m[1]]}"' if m[1] in names else m[0], svg)
        rules = "".join(f".{name}{{{text}}}" for text, name in names.items())
        svg = svg.replace("</style>", rules + "</style>", 1)
    return svg + "\n"


def _row_figure(count: int, labels: Sequence[str] = ()) -> tuple[Any, Any]:
    """A figure for `count` legend entries: the legend beside the axes, or below them (in two or three
    columns, the figure taller) when there are more than fit beside."""
    columns = _legend_columns([_short(label) for label in labels])
    height = 3.8 if count <= _LEGEND_BESIDE else 3.6 + 0.16 * math.ceil(count / columns)
    figure, (ax,) = new_figure(height=height)
    return figure, ax


def _legend(ax: Any, count: int) -> None:
    if not count:
        return
    if count <= _LEGEND_BESIDE:
        ax.legend(
            loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, handlelength=1.5
        )
    else:
        handles, labels = ax.get_legend_handles_labels()
        ax.figure.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=_legend_columns(labels),
            frameon=False,
            handlelength=1.5,
            columnspacing=1.2,
        )


def tradeoff_svg(
    series: Sequence[Series], *, higher_is_better: bool, xlabel: str, ylabel: str, title: str
) -> str:
    """Each row's metric (with its 95% interval) against one cost, the Pareto front as a dashed step line
    and its points ringed: the rows for which no other row is both cheaper and better."""
    import matplotlib

    points = [s for s in series if s.x and finite(s.x[0]) and finite(s.y[0])]
    with matplotlib.rc_context(RC):
        figure, ax = _row_figure(len(points) + 1, [s.label for s in points])
        for s in points:
            err = [s.err[0]] if s.err and finite(s.err[0]) else None
            ax.errorbar(
                [s.x[0]],
                [s.y[0]],
                yerr=err,
                linestyle="none",
                markersize=6,
                capsize=3,
                label=_short(s.label),
                **style(s.index),
            )
        front = pareto_front([s.x[0] for s in points], [s.y[0] for s in points], higher_is_better)
        if front:
            fx, fy = [points[i].x[0] for i in front], [points[i].y[0] for i in front]
            ax.plot(
                fx,
                fy,
                drawstyle="steps-post",
                linestyle="--",
                color="black",
                linewidth=1.0,
                label="Pareto front",
            )
            ax.scatter(fx, fy, s=160, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
        if wants_log([s.x[0] for s in points]):
            ax.set_xscale("log")
        scale_y(ax, [s.y[0] for s in points])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _legend(ax, len(points) + bool(front))
        return to_svg(figure)


def scale_y(ax: Any, values: Sequence[float]) -> None:
    """A logarithmic y axis for positive values over orders of magnitude (losses, MSE); on a linear axis
    of non-negative values, intervals reaching below zero do not drag the axis there."""
    if wants_log(values):
        ax.set_yscale("log")
    elif values and min(values) >= 0 and ax.get_ylim()[0] < 0:
        ax.set_ylim(bottom=-0.03 * ax.get_ylim()[1])


def markevery(count: int) -> int:
    """Every how many points a line shows a marker: all of them up to 20, then about 20."""
    return max(1, math.ceil(count / 20))


def _mean_curve(runs: Sequence[Sequence[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """The mean over runs at each x that every run has (runs of one row share their validation points)."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for run in runs:
        for x, y in run:
            by_x[x].append(y)
    xs = sorted(x for x, ys in by_x.items() if len(ys) == len(runs))
    return xs, [math.fsum(by_x[x]) / len(runs) for x in xs]


def curves_svg(
    rows: Sequence[tuple[str, int, Sequence[Sequence[tuple[float, float]]]]],
    *,
    ylabel: str,
    title: str,
    xlabel: str = "meta-train iteration",
) -> str:
    """Validation curves: per row (label, index, one run per seed) the mean over seeds as a line with
    markers, and each seed as a faint line behind it."""
    import matplotlib

    shown = [(label, index, [run for run in runs if run]) for label, index, runs in rows]
    shown = [entry for entry in shown if entry[2]]
    with matplotlib.rc_context(RC):
        figure, ax = _row_figure(len(shown), [label for label, _, _ in shown])
        values = []
        for label, index, runs in shown:
            look = style(index)
            if len(runs) > 1:
                for run in runs:
                    ax.plot(
                        [p[0] for p in run],
                        [p[1] for p in run],
                        color=look["color"],
                        alpha=0.25,
                        linewidth=0.8,
                    )
            xs, ys = _mean_curve(runs)
            ax.plot(
                xs,
                ys,
                linewidth=1.6,
                markersize=4,
                markevery=markevery(len(xs)),
                label=_short(label),
                **look,
            )
            values += [p[1] for run in runs for p in run]
        scale_y(ax, values)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _legend(ax, len(shown))
        return to_svg(figure)


def steps_svg(series: Sequence[Series], *, ylabel: str, title: str) -> str:
    """The metric after each number of test-time adaptation steps, one line per row (with a band, its 95%
    interval, where the row has one and the figure has few rows)."""
    import matplotlib

    with matplotlib.rc_context(RC):
        figure, ax = _row_figure(len(series), [s.label for s in series])
        values = []
        for s in series:
            look = style(s.index)
            ax.plot(
                s.x,
                s.y,
                linewidth=1.4,
                markersize=4,
                markevery=markevery(len(s.x)),
                label=_short(s.label),
                **look,
            )
            if len(series) <= MAX_BANDS and s.err and len(s.x) > 1 and all(finite(e) for e in s.err):
                ax.fill_between(
                    s.x,
                    [y - e for y, e in zip(s.y, s.err, strict=True)],
                    [y + e for y, e in zip(s.y, s.err, strict=True)],
                    color=look["color"],
                    alpha=0.12,
                    linewidth=0,
                )
            values += list(s.y)
        scale_y(ax, values)
        ax.set_xlabel("test-time adaptation steps")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        _legend(ax, len(series))
        return to_svg(figure)
