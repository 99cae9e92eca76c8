"""The bodies of the report's pages: the index of grids, a grid's cells, a leaderboard with its plots, and
one cell's record. Each function gets the site path of the page it fills (links are relative to it)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness.render import display_table
from harness.report.data import GridInfo, ReportData, Table
from harness.report.markup import breakable, data_table, esc, figure, link, section, status_badge, swatch
from harness.report.plots import style

#: Leaderboard columns whose long values may wrap.
_WRAP = ("algorithm", "chosen", "reported")
#: Frame attributes the table page shows in their own places (or that the notes already say).
_KNOWN_ATTRS = {
    "grid",
    "suite",
    "metric",
    "metric_label",
    "higher_is_better",
    "trajectory_labels",
    "description",
    "notes",
    "measurement_labels",
    "alpha",
    "test",
    "test_name",
    "procedure",
}


def num(value: Any, spec: str = ".4g") -> str:
    """`value` formatted with `spec`; blank when it is not a finite number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return format(value, spec) if ok else ""


def _is_number(text: str) -> bool:
    head = text.strip().lstrip("<>≤≥~+-").replace(",", "")
    return bool(head) and (head[0].isdigit() or (head[0] == "." and head[1:2].isdigit()))


def metric_text(record: Mapping[str, Any]) -> str:
    """A record's headline metric as `0.765 ± 0.017` (blank without one)."""
    metric = record.get("metric") or {}
    mean, ci = num(metric.get("mean")), num(metric.get("ci95"), ".2g")
    return f"{mean} ± {ci}" if mean and ci else mean


def _best_class(rank: str) -> str:
    """Rows ranked first (ties included: `1`, `1=`) are highlighted."""
    text = rank.strip()
    return "best" if text.startswith("1") and not text[1:2].isdigit() else ""


def leaderboard_html(page: str, table: Table, cell_pages: Mapping[int, str]) -> str:
    """The sortable leaderboard: the columns `display_table` makes of the frame, each row marked with its
    colour in the plots and linked to its cells' pages (one per seed)."""
    shown = display_table(table.frame) if "metric_mean" in table.frame.columns else table.frame.astype(str)
    headers = [str(c) for c in shown.columns]
    # The links to the cells go after the seeds column (or the algorithm), where they are seen.
    at = next((headers.index(h) + 1 for h in ("seeds", "backend", "algorithm") if h in headers), len(headers))
    body, classes = [], []
    for i, values in enumerate(shown.itertuples(index=False)):
        cells = [breakable(v) if h in _WRAP else esc(v) for h, v in zip(headers, values, strict=True)]
        if "algorithm" in headers:
            look = style(i)
            cells[headers.index("algorithm")] = (
                swatch(look["color"], look["marker"]) + cells[headers.index("algorithm")]
            )
        links = [
            link(
                page,
                cell_pages[id(r)],
                f"seed {(r.get('cell') or {}).get('seed', '?')}",
                title=str(r.get("cell_id")),
            )
            for r in (table.rows[i] if i < len(table.rows) else [])
            if id(r) in cell_pages
        ]
        body.append([*cells[:at], " · ".join(links), *cells[at:]])
        classes.append(_best_class(str(values[headers.index("rank")])) if "rank" in headers else "")
    numeric = [
        bool(len(shown))
        and all(_is_number(str(v)) for v in shown[c] if str(v).strip())
        and any(str(v).strip() for v in shown[c])
        for c in shown.columns
    ]
    return data_table(
        [*headers[:at], "cells", *headers[at:]],
        body,
        numeric=[*numeric[:at], False, *numeric[at:]],
        wrap=_WRAP,
        row_classes=classes,
        ident="leaderboard",
    )


def table_body(
    page: str,
    table: Table,
    cell_pages: Mapping[int, str],
    plots: Sequence[tuple[str, str, str]],
    grid_page: str,
) -> str:
    """A leaderboard page: what the numbers are, the table, its notes, then the plots (src, alt, caption)."""
    attrs = table.frame.attrs
    parts = [
        f"<h1>{esc(table.suite)}</h1>",
        f'<p class="lead">Leaderboard of grid {link(page, grid_page, table.grid)}. '
        f"{esc(attrs.get('description', ''))}</p>",
    ]
    if len(table.frame):
        parts.append(leaderboard_html(page, table, cell_pages))
        parts.append(
            '<p class="hint">Click a column header to sort by it (again to reverse). Rows ranked first '
            "are highlighted; the mark before each algorithm is its colour in the plots.</p>"
        )
    else:
        parts.append("<p><em>No cell of this table has completed.</em></p>")
    notes = "".join(f"<li>{esc(n)}</li>" for n in attrs.get("notes", ()))
    parts.append(section("Notes", f"<ul>{notes}</ul>" if notes else ""))
    for key, value in attrs.items():  # what else the table carries, e.g. its rows' full configurations
        if key in _KNOWN_ATTRS or not value:
            continue
        title = key.replace("_", " ").capitalize()
        if isinstance(value, str):
            parts.append(section(title, f"<p>{esc(value)}</p>"))
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            parts.append(
                section(title, "<ul>" + "".join(f"<li><code>{esc(v)}</code></li>" for v in value) + "</ul>")
            )
    if plots:
        figures = "".join(figure(page, src, alt, caption) for src, alt, caption in plots)
        parts.append(section("Plots", f'<div class="figures">{figures}</div>', anchor="plots"))
    return "\n".join(parts)


def _best_row(frame: pd.DataFrame) -> str:
    return str(frame["algorithm"].iloc[0]) if len(frame) and "algorithm" in frame else "-"


def tables_list(page: str, info: GridInfo, table_pages: Mapping[int, str]) -> str:
    """A grid's tables: suite, metric, number of rows, the first row, linked to each table's page."""
    rows = []
    for table in info.tables:
        attrs = table.frame.attrs
        arrow = "↑" if attrs.get("higher_is_better") else "↓"
        rows.append(
            [
                link(page, table_pages[id(table)], table.suite, wrap=True),
                esc(f"{attrs.get('metric_label', attrs.get('metric', ''))} {arrow}"),
                esc(len(table.frame)),
                esc(_best_row(table.frame)),
            ]
        )
    return data_table(
        ["suite", "metric", "rows", "first row"],
        rows,
        numeric=[False, False, True, False],
        wrap=("suite", "first row"),
    )


def index_body(
    page: str,
    data: ReportData,
    results_name: str,
    grid_pages: Mapping[str, str],
    table_pages: Mapping[int, str],
) -> str:
    """The front page: every grid with its description and its tables."""
    n_tables = sum(len(info.tables) for info in data.grids.values())
    parts = [
        "<h1>metaharness report</h1>",
        f'<p class="lead">{len(data.grids)} grid(s), {n_tables} leaderboard(s), from {data.n_records} '
        f"record(s) in <code>{esc(results_name)}/</code>. Every table is what <code>harness leaderboard"
        "</code> writes for the same records; each links to its plots and to a page per cell.</p>",
    ]
    if data.warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in data.warnings)
        parts.append(f'<div class="warnings"><b>Warnings</b><ul>{items}</ul></div>')
    for name, info in data.grids.items():
        ok = sum(1 for r in info.records if r.get("status") == "ok")
        counts = f"{len(info.records)} cell(s) with a record, {ok} ok" + (
            f", {info.pending} still to run" if info.pending else ""
        )
        body = (
            (f"<p>{esc(info.description)}</p>" if info.description else "")
            + f'<p class="meta">{esc(counts)} · {link(page, grid_pages[name], "all cells of this grid")}</p>'
            + tables_list(page, info, table_pages)
        )
        parts.append(section(f"grid {name}", body, anchor=f"grid-{name}"))
    return "\n".join(parts)


def grid_body(
    page: str, info: GridInfo, table_pages: Mapping[int, str], cell_pages: Mapping[int, str]
) -> str:
    """A grid's page: its tables and every cell's current record with its status."""
    parts = [f"<h1>grid {esc(info.name)}</h1>"]
    if info.description:
        parts.append(f'<p class="lead">{esc(info.description)}</p>')
    parts.append(section("Leaderboards", tables_list(page, info, table_pages)))
    rows = []
    for record in info.records:
        timings, memory = record.get("timings") or {}, record.get("memory") or {}
        target = cell_pages.get(id(record))
        name = (
            link(page, target, record.get("cell_id"), wrap=True)
            if target
            else breakable(record.get("cell_id"))
        )
        rows.append(
            [
                name,
                status_badge(str(record.get("status"))),
                esc(metric_text(record)),
                esc(num(timings.get("meta_train_s"), ".3g")),
                esc(_mib(memory.get("peak_bytes"))),
                esc(str(record.get("reason") or "")[:160]),
            ]
        )
    pending = f"<p>{info.pending} cell(s) of the grid have no record yet.</p>" if info.pending else ""
    table = data_table(
        ["cell", "status", "metric", "meta-train (s)", "peak mem (MiB)", "reason"],
        rows,
        numeric=[False, False, True, True, True, False],
        wrap=("cell", "reason"),
    )
    parts.append(section("Cells", table + pending))
    return "\n".join(parts)


def _mib(value: Any) -> str:
    return num(value / 2**20, ".4g") if isinstance(value, (int, float)) else ""
