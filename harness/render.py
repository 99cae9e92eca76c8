"""Leaderboard tables (`harness.leaderboard.build_tables` frames) as text: the display formatting of their
numbers, Markdown, LaTeX, CSV and terminal renderings, and the files and per-grid index they are written to."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from harness.errors import UsageError
from harness.files import atomic_write_text
from harness.results import slugify

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex"}
_TEXT_COLUMNS = ("algorithm", "backend", "reported")


def _mean_ci(mean: float, ci: float) -> str:
    """`0.352 ± 0.021`: the CI to two significant digits and the mean to the same decimals."""
    if mean is None or math.isnan(mean):
        return ""
    if ci is None or math.isnan(ci) or ci <= 1e-9 * abs(mean):  # no spread (a deterministic method)
        return f"{mean:.4g}"
    if abs(mean) < 1e-3 or ci < 1e-5:  # fixed notation would print zeros: scientific, as %g does
        return f"{mean:.3g} ± {ci:.2g}"
    decimals = min(6, max(0, 1 - math.floor(math.log10(ci))))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


def _fmt_column(values: Iterable[Any], digits: int = 3) -> list[str]:
    """Each number to `digits` significant digits in fixed notation (`0.855`, `15.2`, `214`); NaN is blank."""
    out = []
    for v in values:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        else:
            x = float(v)
            if x and abs(x) < 1e-3:  # 0.00000000 says nothing: scientific notation for tiny values
                out.append(f"{x:.{digits}g}")
                continue
            decimals = max(0, digits - 1 - math.floor(math.log10(abs(x)))) if x else 0
            out.append(f"{x:.{min(decimals, 8)}f}")
    return out


def _delta(delta: float, low: float, high: float) -> str:
    """`-0.012 [-0.020, -0.004]`: the difference and its interval, to two significant digits of the
    interval's half-width."""
    if delta is None or math.isnan(delta):
        return ""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{delta:.3g}"
    half = max(abs(high - delta), abs(delta - low))
    if half <= 1e-12 * max(1.0, abs(delta)) or (abs(delta) < 1e-3 and half < 1e-5):
        return f"{delta:.3g} [{low:.3g}, {high:.3g}]"
    decimals = min(6, max(0, 1 - math.floor(math.log10(half))))
    return f"{delta:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def _fmt_p(p: float) -> str:
    """A p-value to two significant digits, `<0.001` below that; `n/a` where no test was done."""
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.001" if p < 1e-3 else f"{p:.2g}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The human-facing strings of a `build_tables` frame: `MSE ↓` as `0.352 ± 0.021`, times in s/ms, MiB."""
    metric = table.attrs.get("metric", str(table["metric"].iloc[0]) if len(table) else "metric")
    higher = table.attrs.get("higher_is_better", False)
    name = table.attrs.get("metric_label", metric)
    ranks = (table["rank_label"] if "rank_label" in table
             else ["" if r is pd.NA else str(int(r)) for r in table["rank"]])
    out = pd.DataFrame(
        {
            "rank": [str(r) for r in ranks],
            "algorithm": table["algorithm"].astype(str),
            "backend": table["backend"].astype(str),
            "seeds": [str(s) for s in table["seeds"]],
            f"{name} {'↑' if higher else '↓'}": [
                _mean_ci(m, c) for m, c in zip(table["metric_mean"], table["metric_ci95"], strict=True)
            ],
        }
    )
    if (table["seeds"] > 1).any():
        out["episode CI"] = _fmt_column(table["episode_ci95"], digits=2)
    if "paired_episodes" in table and table["paired_episodes"].notna().any():  # some row was tested
        out["Δ vs best"] = [_delta(*v) for v in zip(table["delta_vs_best"], table["delta_ci_low"],
                                                      table["delta_ci_high"], strict=True)]
        for column, header in (("p_t_holm", "p (t, Holm)"), ("p_wilcoxon_holm", "p (W, Holm)")):
            out[header] = ["" if i == 0 else _fmt_p(p) for i, p in enumerate(table[column])]
    for column in table.columns:
        if column.startswith("metric_step_"):
            out[f"{name}@{column.removeprefix('metric_step_')}"] = _fmt_column(table[column])
    for name, label in table.attrs.get("trajectory_labels", {}).items():
        if f"trajectory_{name}_mean" in table:
            pairs = zip(table[f"trajectory_{name}_mean"], table[f"trajectory_{name}_ci95"], strict=True)
            out[f"{label} ↓"] = [_mean_ci(m, c) for m, c in pairs]
    for name, info in table.attrs.get("measurement_labels", {}).items():
        if f"measurement_{name}_mean" in table:
            arrow = {True: " ↑", False: " ↓"}.get(info.get("higher_is_better"), "")
            out[f"{info.get('label', name)}{arrow}"] = [
                _mean_ci(m, c) for m, c in
                zip(table[f"measurement_{name}_mean"], table[f"measurement_{name}_ci95"], strict=True)]
    if "chosen" in table:
        out["chosen"] = table["chosen"].fillna("").astype(str)
    if "reported" in table:
        out["reported"] = table["reported"].fillna("").astype(str)
    if table.attrs.get("stopped_early"):
        out["iterations (best)"] = [f"{i} ({b})" if i else "" for i, b in
                                    zip(_fmt_column(table["iterations"]), _fmt_column(table["best_iteration"]),
                                        strict=True)]
    for source, header in (
        ("meta_train_s", "meta-train (s)"),
        ("time_per_iter_ms", "time/iter (ms)"),
        ("adapt_latency_ms", "latency (ms/episode)"),
        ("peak_memory_mib", "peak mem (MiB)"),
    ):
        out[header] = _fmt_column(table[source])
    out["params"] = ["" if v is pd.NA else f"{int(v):,}" for v in table["params"]]
    return out


def _as_display(table: pd.DataFrame) -> pd.DataFrame:
    return display_table(table) if "metric_mean" in table.columns else table.astype(str)


def _tabulate(shown: pd.DataFrame, tablefmt: str) -> str:
    align = ["left" if c in _TEXT_COLUMNS else "right" for c in shown.columns]
    rows = [
        [str(v).replace("|", "\\|") if tablefmt == "pipe" else v for v in row]
        for row in shown.values.tolist()
    ]
    return tabulate(
        rows, headers=list(shown.columns), tablefmt=tablefmt, disable_numparse=True, colalign=align
    )


def render_markdown(table: pd.DataFrame, title: str, notes: Sequence[str] = (), description: str = "") -> str:
    """A Markdown section: `# title`, the description line, a pipe table, then notes as a bullet list."""
    shown = _as_display(table)
    body = _tabulate(shown, "pipe") if len(shown) else "_(no completed cells)_"
    configurations = table.attrs.get("configurations") or []
    footnote = ""
    if configurations:
        footnote = ("Configurations (every setting as run; labels show only what differs between rows of one "
                    "algorithm):\n\n" + "\n".join(f"- {line}" for line in configurations))
    parts = [f"# {title}", description, body, "\n".join(f"- {n}" for n in notes), footnote]
    return "\n\n".join(p for p in parts if p) + "\n"


# fmt: off
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--", "—": "---",  # noqa: RUF001
                  "Δ": r"$\Delta$", "≥": r"$\geq$", "<": r"$<$", ">": r"$>$"}
# fmt: on
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (& % $ # _ { } ~ ^ \\) and turn ± ↑ ↓ into math symbols."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text))


def render_latex(table: pd.DataFrame, title: str, notes: Sequence[str] = (), description: str = "") -> str:
    """A booktabs `table` environment; the title and description form the caption, notes become comments."""
    shown = _as_display(table)
    spec = "".join("l" if c in _TEXT_COLUMNS else "r" for c in shown.columns)
    procedure = table.attrs.get("procedure", "")
    comments = [n for n in notes if n != procedure]
    lines = [f"% {line}" for line in (f"{title}: {description}", *comments) if line.strip(": ")]
    lines += [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(title)}. {latex_escape(description)}}}".replace(". }", "}"),
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in shown.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in shown.values.tolist()]
    lines += [r"\bottomrule", r"\end{tabular}"]
    configurations = table.attrs.get("configurations") or []
    footnote = [text for text in (procedure, "Configurations: " + "; ".join(configurations) + "."
                                  if configurations else "") if text]
    if footnote:  # visible under the table: what a reader of the paper needs to interpret the ranks
        lines += [r"\par\smallskip{\footnotesize\raggedright",
                  *(latex_escape(t) + r"\par" for t in footnote), "}"]
    lines += [r"\end{table}"]
    return "\n".join(lines) + "\n"


def render_terminal(tables: Mapping[tuple[str, str], pd.DataFrame]) -> str:
    """The text printed after a run: one titled table per (grid, suite), with its notes."""
    blocks = []
    for (grid, suite), table in sorted(tables.items()):
        shown = _as_display(table)
        body = _tabulate(shown, "github") if len(shown) else "(no completed cells)"
        notes = "".join(f"\n  * {n}" for n in table.attrs.get("notes", ()))
        blocks.append(f"== {suite} (grid {grid}) ==\n{table.attrs.get('description', '')}\n{body}{notes}")
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,+-]+", "_", label).strip("._")[:100] or "table"


def check_formats(formats: Iterable[str] | str) -> tuple[str, ...]:
    """The requested formats, validated; raise UsageError naming the valid ones."""
    requested = (formats,) if isinstance(formats, str) else tuple(formats)
    bad = [f for f in requested if f not in FORMATS]
    if bad or not requested:
        raise UsageError(
            f"unknown leaderboard format(s) {', '.join(map(repr, bad)) or '(none given)'}; "
            f"valid: {', '.join(FORMATS)}"
        )
    return tuple(dict.fromkeys(requested))


def render(table: pd.DataFrame, fmt: str, title: str) -> str:
    """One `build_tables` frame as the text of a file in format `fmt` (md, csv or latex)."""
    notes, description = table.attrs.get("notes", ()), table.attrs.get("description", "")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        return render_latex(table, title, notes, description)
    if fmt == "md":
        return render_markdown(table, title, notes, description)
    raise UsageError(f"unknown leaderboard format {fmt!r}; valid: {', '.join(FORMATS)}")


def write_tables(tables: Mapping[tuple[str, str], pd.DataFrame], out_dir: Path | str,
                 formats: Iterable[str] | str = ("md", "csv", "latex")) -> list[Path]:
    """Write `build_tables` frames as `out_dir/<grid>/<suite>.md|.csv|.tex`, and a `README.md` index per
    grid."""
    formats = check_formats(formats)
    out_dir = Path(out_dir)
    by_grid: dict[str, list[tuple[str, pd.DataFrame]]] = defaultdict(list)
    for (grid, suite), table in tables.items():
        by_grid[grid].append((suite, table))
    written: list[Path] = []
    for grid, entries in sorted(by_grid.items()):
        grid_dir = out_dir / _file_stem(grid)
        stems = Counter(_file_stem(suite) for suite, _ in entries)
        index = [
            f"# Leaderboards: grid {grid}",
            "Generated by `harness leaderboard` from result records; do not edit by hand.",
            "| suite | metric | algorithms | best | files |",
            "|---|---|---|---|---|",
        ]
        for suite, table in entries:
            stem = _file_stem(suite)
            if stems[stem] > 1:  # two labels sanitised to one name: keep both apart
                stem = slugify(suite, 60)
            links = []
            for fmt in formats:
                path = grid_dir / f"{stem}{FORMATS[fmt]}"
                atomic_write_text(path, render(table, fmt, f"{suite} — grid {grid}"), point="leaderboard")
                written.append(path)
                links.append(f"[{fmt}]({path.name})")
            best = table["algorithm"].iloc[0] if len(table) else "-"
            metric = table.attrs.get("metric_label", table.attrs["metric"])
            arrow = "↑" if table.attrs["higher_is_better"] else "↓"
            index.append(f"| {suite} | {metric} {arrow} | {len(table)} | {best} | {' '.join(links)} |")
        readme = grid_dir / "README.md"
        text = "\n\n".join(index[:2]) + "\n\n" + "\n".join(index[2:]) + "\n"
        atomic_write_text(readme, text, point="leaderboard")
        written.append(readme)
    return written
