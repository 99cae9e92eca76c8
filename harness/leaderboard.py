"""Leaderboards as pure functions of result records: pandas tables as Markdown, CSV, LaTeX, terminal text."""

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
from harness.measure import mean_ci95
from harness.results import record_time, slugify
from harness.specs import format_params

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex"}
NO_GRID = "adhoc"  # directory for cells run without a grid name
MAX_STEP_COLUMNS = 4
_MIB = 2**20
_TEXT_COLUMNS = ("algorithm", "backend", "reported")


def _suite_label(cell: Mapping[str, Any]) -> str:
    return str(cell.get("suite", "?")) + format_params(cell.get("suite_config") or {})


def _algorithm_label(cell: Mapping[str, Any]) -> str:
    return str(cell.get("algorithm", "?")) + format_params(cell.get("hparams") or {})


def _mean(values: Iterable[Any]) -> float:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return math.fsum(vals) / len(vals) if vals else math.nan


def _pick_steps(rows: list[dict[str, Any]]) -> list[int]:
    """Steps worth a column: 1, 5, 10 and the last one, when they exist and add something."""
    steps = sorted({s for r in rows for s in r["_per_step"] if s > 0})
    if not steps:
        return []
    chosen = [s for s in (1, 5, 10) if s in steps] or steps[:1]
    chosen = sorted({*chosen, steps[-1]})[:MAX_STEP_COLUMNS]
    finals = {r["final_step"] for r in rows}
    if chosen == list(finals):  # the only step column would repeat the headline metric
        return []
    return chosen


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One leaderboard row from the latest ok record of each seed of one algorithm configuration."""
    metrics = [r.get("metric") or {} for r in records]
    seed_means = [m.get("mean") for m in metrics if isinstance(m.get("mean"), (int, float))]
    episode_ci = _mean(m.get("ci95") for m in metrics)
    if len(seed_means) > 1:
        mean, ci, _ = mean_ci95(seed_means)
        ci_over = "seeds"
    else:
        mean, ci, ci_over = (seed_means[0] if seed_means else math.nan), episode_ci, "episodes"
    per_step: dict[int, list[float]] = defaultdict(list)
    for m in metrics:
        for entry in m.get("per_step") or []:
            if isinstance(entry.get("step"), int) and isinstance(entry.get("mean"), (int, float)):
                per_step[entry["step"]].append(entry["mean"])
    trajectory: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for m in metrics:
        for name, entry in (m.get("trajectory") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
                trajectory[name].append((entry["mean"], entry.get("ci95") or math.nan))
    trajectory_columns = {}
    for name, pairs in trajectory.items():  # aggregated over seeds as the headline metric is
        t_mean, t_ci, _ = mean_ci95([p[0] for p in pairs]) if len(pairs) > 1 else (pairs[0][0], pairs[0][1], 0.0)
        trajectory_columns[f"trajectory_{name}_mean"] = t_mean
        trajectory_columns[f"trajectory_{name}_ci95"] = t_ci
    timings = [r.get("timings") or {} for r in records]
    peaks = [(r.get("memory") or {}).get("peak_bytes") for r in records]
    peaks = [p for p in peaks if isinstance(p, (int, float))]
    params = [r.get("params") for r in records if isinstance(r.get("params"), int)]
    return {
        "seeds": len(records),
        "metric_mean": mean,
        "metric_ci95": ci,
        "ci_over": ci_over,
        "episode_ci95": episode_ci,
        "test_episodes": max((m.get("n") or 0 for m in metrics), default=0) or None,
        "meta_train_s": _mean(t.get("meta_train_s") for t in timings),
        "time_per_iter_ms": _mean(t.get("time_per_iteration_s") for t in timings) * 1e3,
        "adapt_latency_ms": _mean(t.get("adapt_latency_s") for t in timings) * 1e3,
        "peak_memory_mib": max(peaks) / _MIB if peaks else math.nan,
        "params": params[0] if params else None,
        "_per_step": {step: math.fsum(v) / len(v) for step, v in per_step.items()},
        "final_step": metrics[0].get("final_step") if metrics else None,
        "chosen": _chosen(records),
        "_trajectory": trajectory_columns,
    }


def _chosen(records: list[dict[str, Any]]) -> str:
    """What the algorithm chose itself while meta-training (`Algorithm.describe()["chosen"]`), per
    hyper-parameter, with every seed's value where seeds chose differently: `lr=0.01` or `lr=0.01/0.03`."""
    values: dict[str, list[str]] = defaultdict(list)
    for r in records:
        for name, value in (((r.get("algorithm_info") or {}).get("chosen")) or {}).items():
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            if text not in values[name]:
                values[name].append(text)
    return ", ".join(f"{name}={'/'.join(v)}" for name, v in sorted(values.items()))


def _lookup_reported(
    reported: Mapping[Any, Any], suite: str, suite_label: str, algo: str, algo_label: str
) -> str:
    for key in ((suite_label, algo_label), (suite_label, algo), (suite, algo_label), (suite, algo)):
        if key in reported:
            return str(reported[key])
    return ""


def _describe(records: list[dict[str, Any]], label: str, higher: bool, ci_over: set[str]) -> str:
    """One line saying what the numbers are, for the top of the table."""
    if not records:
        return "No cell of this table completed; the notes below say why."
    ns = sorted({(r.get("metric") or {}).get("n") for r in records} - {None})
    episodes = f"{ns[0]}" if len(ns) == 1 else (f"{ns[0]} to {ns[-1]}" if ns else "?")
    if ci_over == {"seeds"}:
        ci_text = (
            "mean over seeds ± 95% t-interval over seeds (episode CI: mean per-seed 95% CI over episodes)"
        )
    elif ci_over == {"episodes"}:
        ci_text = "one seed, mean ± 95% CI over test episodes"
    else:
        ci_text = (
            "± is the 95% t-interval over seeds where a row has several, else the 95% CI over test episodes"
        )
    machines, torches = Counter(), Counter()
    for r in records:
        env = r.get("environment") or {}
        cpu = (env.get("cpu") or {}).get("model") or "unknown CPU"
        machines[cpu + (f" + {env['gpu']}" if env.get("gpu") else "")] += 1
        torches[str(env.get("torch", "?"))] += 1
    what = f"{label} ({'higher' if higher else 'lower'} is better)"
    machine = f"machine: {'; '.join(sorted(machines))}; torch {', '.join(sorted(torches))}"
    return f"{what} on {episodes} test episodes per seed; {ci_text}; {machine}."


def _failure_note(failed: list[dict[str, Any]]) -> str:
    cells = [f"{r.get('cell_id')}: {r.get('status')}" + (f" ({r['reason']})" if r.get("reason") else "")
             for r in sorted(failed, key=lambda r: r.get("cell_id", ""))]  # fmt: skip
    return "cells without a result: " + "; ".join(cells)


def _pending_note(pending: list[str], grid: str) -> str:
    shown = ", ".join(sorted(pending)[:5]) + (", ..." if len(pending) > 5 else "")
    return f"{len(pending)} cell(s) of the grid have no record yet ({shown}): `harness run --grid {grid}` runs them."


def _build_table(grid: str, suite_label: str, records: list[dict[str, Any]], reported: Any,
                 pending: list[str]) -> pd.DataFrame:
    """One leaderboard from the latest record of every cell of one (grid, suite label); `pending` are the
    ids of the grid's cells there that have no record yet."""
    ok = [r for r in records if r.get("status") == "ok"]
    names = Counter((r.get("metric") or {}).get("name", "metric") for r in ok)
    metric = names.most_common(1)[0][0] if names else "metric"
    # How the suite asked for the metric to be printed (records before suites declared it: its name).
    labels = Counter((r.get("metric") or {}).get("label") or metric.replace("_", " ") for r in ok)
    label = labels.most_common(1)[0][0] if labels else metric
    higher = bool(next((r["metric"].get("higher_is_better") for r in ok if r.get("metric")), False))
    rows_by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        cell = r.get("cell") or {}
        rows_by[(_algorithm_label(cell), str(cell.get("backend", "?")))].append(r)
    rows = []
    for (algo_label, backend), recs in sorted(rows_by.items()):
        cell = recs[0].get("cell") or {}
        row = {"grid": grid, "suite": suite_label, "algorithm": algo_label, "backend": backend}
        row.update(metric=metric, higher_is_better=higher, **_aggregate(recs))
        if reported is not None:
            suite, algo = str(cell.get("suite")), str(cell.get("algorithm"))
            row["reported"] = _lookup_reported(reported, suite, suite_label, algo, algo_label)
        rows.append(row)
    steps = _pick_steps(rows)
    trajectory_names: list[str] = []
    for row in rows:
        per_step = row.pop("_per_step")
        row.update({f"metric_step_{step}": per_step.get(step, math.nan) for step in steps})
        extra = row.pop("_trajectory")
        row.update(extra)
        trajectory_names += [c for c in extra if c not in trajectory_names]
    # Labels of the suite's trajectory metrics, as the records carry them.
    trajectory_labels = {name: entry.get("label") or name.replace("_", " ")
                         for r in ok for name, entry in ((r.get("metric") or {}).get("trajectory") or {}).items()
                         if isinstance(entry, dict)}
    columns = [
        *_COLUMNS_HEAD,
        *(f"metric_step_{s}" for s in steps),
        *trajectory_names,
        *(["chosen"] if any(row["chosen"] for row in rows) else []),
        *(["reported"] if reported is not None else []),
    ]
    frame = pd.DataFrame(rows, columns=[*columns, *_COLUMNS_TAIL])
    if len(frame):
        frame["rank"] = frame["metric_mean"].rank(method="min", ascending=not higher, na_option="keep")
        frame = frame.sort_values(["rank", "algorithm", "backend"], na_position="last", kind="stable")
    frame = frame.astype({"rank": "Int64", "params": "Int64"}).reset_index(drop=True)
    notes = []
    if len(names) > 1:
        notes.append(f"mixed metrics in this table: {', '.join(sorted(names))}; ranked by {metric}.")
    exclusive = {(r.get("execution") or {}).get("exclusive", True) for r in ok}
    if exclusive == {True, False}:
        notes.append("some cells ran concurrently with others: their timings are not comparable.")
    elif exclusive == {False}:
        notes.append("cells ran while other work shared the machine: timings are indicative only.")
    if len(ok) < len(records):
        notes.append(_failure_note([r for r in records if r.get("status") != "ok"]))
    if pending:
        notes.append(_pending_note(pending, grid))
    # What the suite asks to be said under its table (out-of-distribution test tasks, ...).
    for note in dict.fromkeys(str((r.get("suite_info") or {}).get("leaderboard_note") or "") for r in ok):
        if note:
            notes.insert(0, note)
    description = _describe(ok, label, higher, set(frame["ci_over"]))
    frame.attrs = {"grid": grid, "suite": suite_label, "metric": metric, "metric_label": label,
                   "higher_is_better": higher, "trajectory_labels": trajectory_labels,
                   "description": description, "notes": notes}  # fmt: skip
    return frame


def build_tables(
    records: Iterable[Mapping[str, Any]], reported: Mapping[Any, Any] | None = None,
    pending: Iterable[Mapping[str, Any]] = (),
) -> dict[tuple[str, str], pd.DataFrame]:
    """Group records into leaderboards keyed by (grid, suite label), one row per (algorithm label, backend).

    Only the newest record per (cell id, grid) counts and only ok ones become rows; a row's seeds are
    aggregated (mean over seeds ± t-interval; one seed: ± the episode CI). Each frame holds numeric
    columns (what the CSV gets; `display_table` formats them), sorted by rank, and `attrs` with `grid`,
    `suite`, `metric`, `higher_is_better`, `description` (what the numbers are) and `notes` (the non-ok
    cells, for a footnote). `reported` maps (suite label or name, algorithm label or name) to a
    published number, shown in a `reported` column. `pending` are cells (`Cell.to_dict()`) of a grid
    that have no record yet: each table says how many of its cells are still to run.
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in sorted(records, key=record_time):  # stable: input order breaks timestamp ties
        cell = record.get("cell") or {}
        latest[(record.get("cell_id", ""), cell.get("grid") or NO_GRID)] = dict(record)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for (_, grid), record in latest.items():
        groups[(grid, _suite_label(record.get("cell") or {}))].append(record)
    waiting: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cell in pending:
        waiting[(cell.get("grid") or NO_GRID, _suite_label(cell))].append(str(cell.get("id")))
    return {key: _build_table(*key, groups[key], _with_recorded(groups[key], reported), waiting[key])
            for key in sorted(set(groups) | set(waiting))}


def _with_recorded(records: list[dict[str, Any]], reported: Mapping[Any, Any] | None) -> Mapping[Any, Any] | None:
    """Published numbers that the grid put into the records' cells, under any given explicitly."""
    recorded = {}
    for record in records:
        cell = record.get("cell") or {}
        if cell.get("reported"):
            recorded[(_suite_label(cell), _algorithm_label(cell))] = cell["reported"]
    if not recorded:
        return reported
    return {**recorded, **(reported or {})}


_COLUMNS_HEAD = (
    "rank grid suite algorithm backend seeds metric higher_is_better metric_mean metric_ci95 ci_over "
    "episode_ci95 test_episodes final_step"
).split()
_COLUMNS_TAIL = "meta_train_s time_per_iter_ms adapt_latency_ms peak_memory_mib params".split()


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


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The human-facing strings of a `build_tables` frame: `MSE ↓` as `0.352 ± 0.021`, times in s/ms, MiB."""
    metric = table.attrs.get("metric", str(table["metric"].iloc[0]) if len(table) else "metric")
    higher = table.attrs.get("higher_is_better", False)
    name = table.attrs.get("metric_label", metric)
    out = pd.DataFrame(
        {
            "rank": ["" if r is pd.NA else str(int(r)) for r in table["rank"]],
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
    for column in table.columns:
        if column.startswith("metric_step_"):
            out[f"{name}@{column.removeprefix('metric_step_')}"] = _fmt_column(table[column])
    for name, label in table.attrs.get("trajectory_labels", {}).items():
        if f"trajectory_{name}_mean" in table:
            out[f"{label} ↓"] = [_mean_ci(m, c) for m, c in
                                 zip(table[f"trajectory_{name}_mean"], table[f"trajectory_{name}_ci95"], strict=True)]
    if "chosen" in table:
        out["chosen"] = table["chosen"].fillna("").astype(str)
    if "reported" in table:
        out["reported"] = table["reported"].fillna("").astype(str)
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
    parts = [f"# {title}", description, body, "\n".join(f"- {n}" for n in notes)]
    return "\n\n".join(p for p in parts if p) + "\n"


# fmt: off
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--", "—": "---"}  # noqa: RUF001
# fmt: on
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    """Escape LaTeX specials (& % $ # _ { } ~ ^ \\) and turn ± ↑ ↓ into math symbols."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text))


def render_latex(table: pd.DataFrame, title: str, notes: Sequence[str] = (), description: str = "") -> str:
    """A booktabs `table` environment; the title and description form the caption, notes become comments."""
    shown = _as_display(table)
    spec = "".join("l" if c in _TEXT_COLUMNS else "r" for c in shown.columns)
    lines = [f"% {line}" for line in (f"{title}: {description}", *notes) if line.strip(": ")]
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
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
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


def write_leaderboards(
    records: Iterable[Mapping[str, Any]],
    out_dir: Path | str,
    formats: Iterable[str] | str = ("md", "csv", "latex"),
    reported: Mapping[Any, Any] | None = None,
    pending: Iterable[Mapping[str, Any]] = (),
) -> list[Path]:
    """Write `out_dir/<grid>/<suite>.md|.csv|.tex` plus a `README.md` index per grid; return the paths."""
    return write_tables(build_tables(records, reported, pending), out_dir, formats)


def write_tables(tables: Mapping[tuple[str, str], pd.DataFrame], out_dir: Path | str,
                 formats: Iterable[str] | str = ("md", "csv", "latex")) -> list[Path]:
    """Write `build_tables` frames as `out_dir/<grid>/<suite>.md|.csv|.tex` and a `README.md` index per grid."""
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
        atomic_write_text(readme, "\n\n".join(index[:2]) + "\n\n" + "\n".join(index[2:]) + "\n", point="leaderboard")
        written.append(readme)
    return written
