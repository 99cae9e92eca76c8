"""Leaderboards as pure functions of result records: pandas tables with paired statistics (`harness.stats`),
written as Markdown, CSV and LaTeX by `harness.render`."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import episode_values, stats
from harness.errors import UsageError
from harness.measure import mean_ci95
from harness.render import write_tables
from harness.results import record_time
from harness.specs import format_params

NO_GRID = "adhoc"  # directory for cells run without a grid name
MAX_STEP_COLUMNS = 4
_MIB = 2**20


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


_NO_VALUES = "no per-episode values in its records"


def _episode_matrix(records: list[dict[str, Any]]) -> tuple[np.ndarray | None, Any, str]:
    """A row's [seeds, episodes] final-step values, their episode identity, and why not ('' if there)."""
    keys = {episode_values.identity(r) for r in records}
    if None in keys:
        return None, None, _NO_VALUES
    if len(keys) > 1:
        return None, None, "its seeds were tested on different episodes"
    try:
        matrix = np.vstack([episode_values.values(r, -1) for r in records])
    except ValueError as exc:
        return None, None, f"unreadable per-episode values ({exc})"
    if not np.isfinite(matrix).all():
        return None, None, "non-finite per-episode values (diverged episodes)"
    return matrix, keys.pop(), ""


def _over_seeds(prefix: str, entries: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """`{prefix}{name}_mean` / `_ci95` columns of per-seed (name, {mean, ci95}) entries, aggregated over seeds
    as the headline metric is without per-episode values: mean ± t-interval over seeds, one seed its CI."""
    pairs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("mean"), (int, float)):
            pairs[name].append((entry["mean"], entry.get("ci95") or math.nan))
    columns = {}
    for name, values in pairs.items():
        mean, ci, _ = mean_ci95([v[0] for v in values]) if len(values) > 1 else (*values[0], 0.0)
        columns[f"{prefix}{name}_mean"], columns[f"{prefix}{name}_ci95"] = mean, ci
    return columns


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One leaderboard row from the latest ok record of each seed of one algorithm configuration."""
    records = sorted(records, key=lambda r: (str((r.get("cell") or {}).get("seed")), str(r.get("cell_id"))))
    metrics = [r.get("metric") or {} for r in records]
    seed_means = [m.get("mean") for m in metrics if isinstance(m.get("mean"), (int, float))]
    episode_ci = _mean(m.get("ci95") for m in metrics)
    matrix, key, untested = _episode_matrix(records)
    mean = math.fsum(seed_means) / len(seed_means) if seed_means else math.nan
    if len(seed_means) > 1 and matrix is not None:  # seeds and episodes both vary: harness.stats
        _, low, high = stats.bootstrap_interval([matrix], [1.0])
        ci, ci_over = (high - low) / 2, "seeds+episodes"
    else:
        if len(seed_means) > 1:
            mean, ci, _ = mean_ci95(seed_means)
            ci_over = "seeds"
        else:
            ci, ci_over = episode_ci, "episodes"
        low, high = mean - ci, mean + ci
    per_step: dict[int, list[float]] = defaultdict(list)
    for m in metrics:
        for entry in m.get("per_step") or []:
            if isinstance(entry.get("step"), int) and isinstance(entry.get("mean"), (int, float)):
                per_step[entry["step"]].append(entry["mean"])
    trajectory = _over_seeds("trajectory_", (i for m in metrics for i in (m.get("trajectory") or {}).items()))
    measured = _over_seeds("measurement_", (i for r in records
                                            for i in (r.get("measurements") or {}).items()))
    timings = [r.get("timings") or {} for r in records]
    peaks = [(r.get("memory") or {}).get("peak_bytes") for r in records]
    peaks = [p for p in peaks if isinstance(p, (int, float))]
    params = [r.get("params") for r in records if isinstance(r.get("params"), int)]
    return {
        "seeds": len(records),
        "metric_mean": mean,
        "metric_ci95": ci,
        "ci_low": low,
        "ci_high": high,
        "ci_over": ci_over,
        "episode_ci95": episode_ci,
        "test_episodes": max((m.get("n") or 0 for m in metrics), default=0) or None,
        "iterations": _mean(t.get("iterations") for t in timings),
        "best_iteration": _mean((r.get("best") or {}).get("iteration") for r in records),
        "_stopped_early": any(t.get("stopped_by") in EARLY_STOPS for t in timings),
        "meta_train_s": _mean(t.get("meta_train_s") for t in timings),
        "time_per_iter_ms": _mean(t.get("time_per_iteration_s") for t in timings) * 1e3,
        "adapt_latency_ms": _mean(t.get("adapt_latency_s") for t in timings) * 1e3,
        "peak_memory_mib": max(peaks) / _MIB if peaks else math.nan,
        "params": params[0] if params else None,
        "_per_step": {step: math.fsum(v) / len(v) for step, v in per_step.items()},
        "final_step": metrics[0].get("final_step") if metrics else None,
        "chosen": _chosen(records),
        "_why": untested,
        "_trajectory": trajectory,
        "_measured": measured,
        "_matrix": matrix,
        "_key": key,
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


_CI_TEXT = {  # what ± is, by `ci_over`
    "seeds+episodes": "several seeds with per-episode values: mean over seeds ± half the width of a 95% "
                      "two-way bootstrap interval resampling seeds and test episodes (Owen 2007; "
                      "conservative)",
    "seeds": "several seeds without per-episode values: mean over seeds ± 95% t-interval over seed means "
             "(episode CI: mean per-seed 95% CI over episodes)",
    "episodes": "one seed: mean ± 95% t-interval over test episodes",
}


def _describe(records: list[dict[str, Any]], label: str, higher: bool, ci_over: set[str]) -> str:
    """One line saying what the numbers are, for the top of the table (the caption of the LaTeX table)."""
    if not records:
        return "No cell of this table completed; the notes below say why."
    ns = sorted({(r.get("metric") or {}).get("n") for r in records} - {None})
    episodes = f"{ns[0]}" if len(ns) == 1 else (f"{ns[0]} to {ns[-1]}" if ns else "?")
    ci_text = "; ".join(_CI_TEXT[kind] for kind in sorted(ci_over))
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
    return (f"{len(pending)} cell(s) of the grid have no record yet ({shown}): `harness run --grid {grid}` "
            "runs them.")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _full_config(record: Mapping[str, Any], part: str) -> dict[str, Any]:
    """The record's resolved hyper-parameters (`part` "algorithm") or budget ("budget"); the cell's own
    values where the record has no configuration (records made by hand)."""
    config = record.get("config") or {}
    value = (config.get("algorithm") or {}).get("hparams") if part == "algorithm" else config.get("budget")
    if isinstance(value, dict):
        return dict(value)
    cell = record.get("cell") or {}
    return dict(cell.get("hparams" if part == "algorithm" else "budget") or {})


def _row_labels(rows: list[dict[str, Any]], neutral: Mapping[str, Iterable[str]]) -> list[str]:
    """Each row's label: its algorithm with the hyper-parameters whose values differ between the table's
    rows of that algorithm, leaving out result-neutral ones (`harness.specs.RESULT_NEUTRAL`) unless only
    they tell two rows apart; the full configuration goes to the CSV and the footnote."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_name[row["algorithm_name"]].append(i)

    def label(i: int, with_neutral: bool) -> str:
        name, mine = rows[i]["algorithm_name"], rows[i]["_hparams"]
        group = [rows[j]["_hparams"] for j in by_name[name]]
        keys = sorted({k for hp in group for k in hp})
        differ = [k for k in keys if len({_canonical(hp[k]) if k in hp else "(unset)" for hp in group}) > 1]
        hidden = () if with_neutral else set(neutral.get(name, ()))
        return name + format_params({k: mine[k] for k in differ if k in mine and k not in hidden})

    labels = [label(i, False) for i in range(len(rows))]
    for attempt in (lambda i: label(i, True), lambda i: rows[i]["cell_label"]):
        seen = Counter((labels[i], rows[i]["backend"]) for i in range(len(rows)))
        labels = [attempt(i) if seen[(labels[i], rows[i]["backend"])] > 1 else labels[i]
                  for i in range(len(rows))]
    return labels


def _settings(values: Mapping[str, Any]) -> str:
    """`a=1, b=(2, 3)`: every setting, values written as in labels."""
    return ", ".join(format_params({k: values[k]})[1:-1].replace(",", ", ") for k in sorted(values)) or "-"


def _configurations(rows: list[dict[str, Any]], ok: list[dict[str, Any]]) -> list[str]:
    """The footnote lines: the suite's and budget's full configuration, then every row's hyper-parameters."""
    suites = Counter(_canonical(((r.get("config") or {}).get("suite") or {}).get("config")) for r in ok)
    lines = []
    if len(suites) == 1 and (suite := json.loads(next(iter(suites)))):
        lines.append(f"suite: {_settings(suite)}")
    budgets = sorted({row["budget"] for row in rows})
    if len(budgets) == 1 and budgets[0] != "{}":
        lines.append(f"budget: {_settings(json.loads(budgets[0]))}")
    elif len(budgets) > 1:
        lines.append("budget: differs between rows (the CSV's budget column gives each)")
    shown = dict.fromkeys(f"{row['algorithm']}: {_settings(json.loads(row['hparams']))}" for row in rows)
    return lines + list(shown)


def _statistics_columns(result: stats.TableStatistics, rows: list[dict[str, Any]]) -> None:
    """Put the paired statistics of `harness.stats.table_statistics` into the rows."""
    for i, row in enumerate(rows):
        test, delta = result.vs_best[i], result.delta[i] or (math.nan,) * 3
        rank, leader = result.rank[i], result.leader[i]
        row.update(
            rank=rank, rank_label="" if rank is None else f"{rank}{'=' if result.shared[i] else ''}",
            shared_rank=result.shared[i], delta_vs_best=delta[0], delta_ci_low=delta[1],
            delta_ci_high=delta[2],
            paired_episodes=test.n if test else None, p_t=test.t_pvalue if test else math.nan,
            p_t_holm=result.t_holm[i], p_wilcoxon=test.w_pvalue if test else math.nan,
            p_wilcoxon_holm=result.w_holm[i], rank_p_holm=result.rank_pvalue[i],
            rank_leader=rows[leader]["algorithm"] if leader is not None and leader != i else "",
            stats_note=test.reason if test else result.reasons[i], _untested=result.reasons[i])


def _untested_note(rows: list[dict[str, Any]]) -> str:
    untested = [row for row in rows if row["_untested"]]
    if len(rows) < 2 or not untested:
        return ""
    if {row["_untested"] for row in rows} == {_NO_VALUES}:
        return ("no paired tests: these records keep no per-episode values (they predate them), so rows are "
                "ranked by mean alone; re-running the cells adds them.")
    listed = "; ".join(f"{row['algorithm']} ({row['_untested']})" for row in untested)
    return f"not tested, ranked by mean and never tied: {listed}."


_COLUMNS_HEAD = (
    "rank rank_label grid suite algorithm backend seeds metric higher_is_better metric_mean metric_ci95 "
    "ci_low ci_high ci_over episode_ci95 test_episodes final_step"
).split()
_COLUMNS_STATS = (
    "delta_vs_best delta_ci_low delta_ci_high paired_episodes p_t p_t_holm p_wilcoxon p_wilcoxon_holm "
    "shared_rank rank_leader rank_p_holm stats_note"
).split()
_COLUMNS_TAIL = "iterations best_iteration meta_train_s time_per_iter_ms adapt_latency_ms peak_memory_mib params".split()
#: `timings.stopped_by` values that end meta-training before the budget's iterations (the runner's).
EARLY_STOPS = ("patience", "time_limit")
_COLUMNS_CONFIG = "algorithm_name cell_label hparams budget".split()


def _build_table(grid: str, suite_label: str, records: list[dict[str, Any]], reported: Any,
                 pending: list[str], neutral: Mapping[str, Iterable[str]], alpha: float,
                 test: str) -> pd.DataFrame:
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
        row.update(algorithm_name=str(cell.get("algorithm", "?")), cell_label=algo_label,
                   _hparams=_full_config(recs[0], "algorithm"),
                   budget=_canonical(_full_config(recs[0], "budget")))
        if reported is not None:
            suite, algo = str(cell.get("suite")), str(cell.get("algorithm"))
            row["reported"] = _lookup_reported(reported, suite, suite_label, algo, algo_label)
        rows.append(row)
    for row, short in zip(rows, _row_labels(rows, neutral), strict=True):
        row["algorithm"], row["hparams"] = short, _canonical(row.pop("_hparams"))
    result = stats.table_statistics([r["metric_mean"] for r in rows], [r.pop("_matrix") for r in rows],
                                    [r.pop("_key") for r in rows], higher, alpha, test,
                                    reasons=[r.pop("_why") for r in rows])
    _statistics_columns(result, rows)
    steps = _pick_steps(rows)
    stopped_early = any([row.pop("_stopped_early") for row in rows])
    extra_names: dict[str, list[str]] = {"_trajectory": [], "_measured": []}
    for row in rows:
        per_step = row.pop("_per_step")
        row.update({f"metric_step_{step}": per_step.get(step, math.nan) for step in steps})
        for key, seen in extra_names.items():
            extra = row.pop(key)
            row.update(extra)
            seen += [c for c in extra if c not in seen]
    # Labels of the suite's trajectory metrics and of the extra measurements, as the records carry them.
    trajectory_labels = {name: entry.get("label") or name.replace("_", " ") for r in ok
                         for name, entry in ((r.get("metric") or {}).get("trajectory") or {}).items()
                         if isinstance(entry, dict)}
    measurement_labels = {name: {"label": entry.get("label") or name.replace("_", " "),
                                 "higher_is_better": entry.get("higher_is_better")}
                          for r in ok for name, entry in (r.get("measurements") or {}).items()
                          if isinstance(entry, dict)}
    columns = [
        *_COLUMNS_HEAD, *_COLUMNS_STATS,
        *(f"metric_step_{s}" for s in steps),
        *extra_names["_trajectory"], *extra_names["_measured"],
        *(["chosen"] if any(row["chosen"] for row in rows) else []),
        *(["reported"] if reported is not None else []),
    ]
    frame = pd.DataFrame(rows, columns=[*columns, *_COLUMNS_TAIL, *_COLUMNS_CONFIG])
    if len(frame):
        frame = frame.sort_values(["rank", "metric_mean", "algorithm", "backend"], na_position="last",
                                  ascending=[True, not higher, True, True], kind="stable")
    frame = frame.astype({"rank": "Int64", "params": "Int64", "paired_episodes": "Int64",
                          "shared_rank": bool}).reset_index(drop=True)
    notes = []
    tested = any(t is not None for t in result.vs_best)
    procedure = stats.procedure_note(alpha, test) if tested else ""
    if procedure:
        notes.append(procedure)
    if untested := _untested_note(rows):
        notes.append(untested)
    if len(names) > 1:
        notes.append(f"mixed metrics in this table: {', '.join(sorted(names))}; ranked by {metric}.")
    exclusive = {(r.get("execution") or {}).get("exclusive", True) for r in ok}
    if exclusive == {True, False}:
        notes.append("some cells ran concurrently with others: their timings are not comparable.")
    elif exclusive == {False}:
        notes.append("cells ran while other work shared the machine: timings are indicative only.")
    if stopped_early:
        notes.append("meta-training stopped early (patience or time limit) in some cells: the iterations "
                     "column is the mean over seeds of iterations trained, with the iteration of the best "
                     "validation (the parameters tested) in parentheses.")
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
                   "measurement_labels": measurement_labels, "description": description, "notes": notes,
                   "alpha": alpha, "test": test, "test_name": stats.TEST_NAMES[test], "procedure": procedure,
                   "configurations": _configurations(rows, ok), "stopped_early": stopped_early}  # fmt: skip
    return frame


def build_tables(
    records: Iterable[Mapping[str, Any]], reported: Mapping[Any, Any] | None = None,
    pending: Iterable[Mapping[str, Any]] = (), *, neutral: Mapping[str, Iterable[str]] | None = None,
    alpha: float = stats.ALPHA, test: str = stats.PRIMARY_TEST,
) -> dict[tuple[str, str], pd.DataFrame]:
    """Group records into leaderboards keyed by (grid, suite label), one row per (algorithm label, backend).

    Only the newest record per (cell id, grid) counts and only ok ones become rows. A row's seeds are
    aggregated: the mean over seeds ± an interval (`ci_over` says which: a seeds-and-episodes bootstrap,
    a t-interval over seeds without per-episode values, one seed's episode CI). Rows are compared on
    their shared test episodes with the best row and ranked with ties at `alpha` on `test` ("t" or
    "wilcoxon"), as `harness.stats` describes. Labels show only the hyper-parameters that differ between
    rows of one algorithm, never those `neutral` names per algorithm (`harness.specs.result_neutral`).
    Each frame holds numeric columns (what the CSV gets; `display_table` formats them), sorted by rank,
    and `attrs` with `grid`, `suite`, `metric`, `higher_is_better`, `description` (what the numbers are,
    the caption), `notes` (the statistics procedure, untested rows, non-ok cells: a footnote),
    `configurations` (the full configuration, footnote lines), `alpha`, `test`. `reported` maps (suite
    label or name, algorithm label or name) to a published number, shown in a `reported` column.
    `pending` are cells (`Cell.to_dict()`) of a grid that have no record yet: each table says how many
    of its cells are still to run.
    """
    try:
        stats.check_test(test, alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
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
    return {key: _build_table(*key, groups[key], _with_recorded(groups[key], reported), waiting[key],
                              neutral or {}, alpha, test)
            for key in sorted(set(groups) | set(waiting))}


def _with_recorded(records: list[dict[str, Any]],
                   reported: Mapping[Any, Any] | None) -> Mapping[Any, Any] | None:
    """Published numbers that the grid put into the records' cells, under any given explicitly."""
    recorded = {}
    for record in records:
        cell = record.get("cell") or {}
        if cell.get("reported"):
            recorded[(_suite_label(cell), _algorithm_label(cell))] = cell["reported"]
    if not recorded:
        return reported
    return {**recorded, **(reported or {})}


def write_leaderboards(
    records: Iterable[Mapping[str, Any]],
    out_dir: Path | str,
    formats: Iterable[str] | str = ("md", "csv", "latex"),
    reported: Mapping[Any, Any] | None = None,
    pending: Iterable[Mapping[str, Any]] = (),
    **options: Any,
) -> list[Path]:
    """Write `out_dir/<grid>/<suite>.md|.csv|.tex` plus a `README.md` index per grid; return the paths.
    `options` are `build_tables`'s keyword arguments (`neutral`, `alpha`, `test`)."""
    return write_tables(build_tables(records, reported, pending, **options), out_dir, formats)
