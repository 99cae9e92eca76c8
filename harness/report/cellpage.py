"""The page of one cell: its record's status, metric, curves, configuration, execution, timings, memory,
environment and code version, each in a card of its own, and the traceback of a cell that failed."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from harness.report.markup import data_table, esc, figure, link, pairs_table, section, status_badge
from harness.report.pages import metric_text, num
from harness.show import config_pairs, human_bytes

#: Record fields that the cell page shows in sections of their own.
_SHOWN = {
    "schema",
    "cell_id",
    "cell",
    "config",
    "fingerprint",
    "code_version",
    "seeds",
    "status",
    "reason",
    "environment",
    "execution",
    "started_at",
    "finished_at",
    "metric",
    "timings",
    "memory",
    "params",
    "suite_info",
    "algorithm_info",
    "curve",
    "best",
    "per_episode",
    "traceback",
}


def thin(rows: Sequence[Any], limit: int = 21) -> list[Any]:
    """At most `limit` rows, evenly spaced, the first and the last always among them."""
    if len(rows) <= limit:
        return list(rows)
    return [rows[i] for i in sorted({round(k * (len(rows) - 1) / (limit - 1)) for k in range(limit)})]


def _plain(value: Any) -> str:
    if (
        isinstance(value, (dict, list))
        and value
        and any(isinstance(v, (dict, list)) for v in (value.values() if isinstance(value, dict) else value))
    ):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if value is None:
        return "none"
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted keys (`cpu.model`), lists of mappings item by item."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
        return [p for i, v in enumerate(value) for p in flatten(v, f"{prefix}.{i}")]
    return [(prefix, _plain(value) if isinstance(value, list) else value)]


def cell_body(
    page: str,
    record: Mapping[str, Any],
    tables: Sequence[tuple[str, str]],
    figure_src: str | None,
    episodes: Any = None,
) -> str:
    """One record: status, the tables it is in, metric, figure, configuration, execution, timings, memory."""
    metric = record.get("metric") or {}
    head = [
        ("status", status_badge(str(record.get("status")))),
        ("reason", esc(record.get("reason") or "")),
        ("in tables", " · ".join(link(page, target, text) for target, text in tables)),
        ("started", esc(record.get("started_at") or "")),
        ("finished", esc(record.get("finished_at") or "")),
        ("fingerprint", f"<code>{esc(record.get('fingerprint') or '')}</code>"),
    ]
    parts = [f'<h1 class="cell-id">{esc(record.get("cell_id"))}</h1>', pairs_table(head, raw=True)]
    if record.get("traceback"):
        parts.append(section("Traceback", f"<pre>{esc(str(record['traceback']).rstrip())}</pre>"))
    metric_html = ""
    if metric:
        direction = "higher" if metric.get("higher_is_better") else "lower"
        pairs = [
            ("metric", f"{metric.get('label') or metric.get('name')} ({direction} is better)"),
            ("mean ± 95% CI", metric_text(record)),
            ("std over episodes", num(metric.get("std"))),
            ("test episodes", metric.get("n")),
            ("after step", metric.get("final_step")),
            ("episodes", metric.get("episodes")),
        ]
        pairs += [
            (f"trajectory {k}", f"{num(v.get('mean'))} ± {num(v.get('ci95'), '.2g')}")
            for k, v in (metric.get("trajectory") or {}).items()
            if isinstance(v, Mapping)
        ]
        if episodes is not None:
            pairs.append(
                (
                    "per-episode values",
                    f"{episodes.shape[1]} episodes × {episodes.shape[0]} steps "
                    f"(test seed {(record.get('per_episode') or {}).get('seed')})",
                )
            )
        steps = thin(metric.get("per_step") or [])
        metric_html = pairs_table(pairs)
        if len(steps) > 1:
            metric_html += data_table(
                ["step", "mean", "95% CI"],
                [
                    [esc(s.get("step")), esc(num(s.get("mean"))), esc(num(s.get("ci95"), ".2g"))]
                    for s in steps
                ],
                sortable=False,
                numeric=[True, True, True],
                caption="test metric after each adaptation step",
            )
    if figure_src:
        parts.append(
            section(
                "Curves",
                figure(
                    page,
                    figure_src,
                    f"curves of {record.get('cell_id')}",
                    "Validation metric and meta-train loss by iteration; test metric "
                    "after each adaptation step; per-episode distribution.",
                ),
            )
        )
    timings = [
        (k, num(v, ".4g") if isinstance(v, float) else v) for k, v in (record.get("timings") or {}).items()
    ]
    memory = record.get("memory") or {}
    size = [
        ("peak memory", memory and f"{human_bytes(memory.get('peak_bytes'))} ({memory.get('kind', '?')})"),
        ("parameters", f"{record['params']:,}" if isinstance(record.get("params"), int) else None),
    ]
    others = {k: v for k, v in record.items() if k not in _SHOWN and v not in (None, {}, [])}
    cards = [
        section(title, body)
        for title, body in (
            ("Metric", metric_html),
            ("Configuration", pairs_table(config_pairs(record, mark="  (set by the grid)", show=_plain))),
            ("Timings (seconds)", pairs_table(timings)),
            ("Memory and size", pairs_table(size)),
            ("Execution", pairs_table(flatten(record.get("execution") or {}))),
            ("Seeds", pairs_table((record.get("seeds") or {}).items())),
            ("Environment", pairs_table(flatten(record.get("environment") or {}))),
            ("Code version", pairs_table(flatten(record.get("code_version") or {}))),
            ("Suite", pairs_table(flatten(record.get("suite_info") or {}))),
            ("Algorithm", pairs_table(flatten(record.get("algorithm_info") or {}))),
            ("Other fields", pairs_table(flatten(others))),
        )
    ]
    parts.append(f'<div class="cards">{"".join(cards)}</div>')
    curve = record.get("curve") or []
    if curve:
        keys = [
            k for k in ("iteration", "train_loss", "val_metric", "elapsed_s") if any(k in c for c in curve)
        ]
        rows = [[esc(num(c.get(k), ".5g")) for k in keys] for c in thin(curve)]
        best = record.get("best") or {}
        caption = (
            f"best: iteration {best.get('iteration')}, validation {num(best.get('val_metric'))}. "
            if best
            else ""
        ) + (f"{len(rows)} of {len(curve)} validation points shown." if len(rows) < len(curve) else "")
        parts.append(
            section("Learning curve", data_table(keys, rows, numeric=[True] * len(keys), caption=caption))
        )
    return "\n".join(p for p in parts if p)
