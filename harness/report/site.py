"""The report as a folder of files: where each page and figure goes, the figures of each table, and the
writing of it all (each file whole or not at all; files of an earlier report that are no longer part of it
are removed, and nothing else in the folder is touched).

    index.html                      grids and their leaderboards
    grids/<grid>/index.html         a grid's tables and cells
    grids/<grid>/<suite>.html       a leaderboard, its plots beside it (<suite>-<plot>.svg)
    cells/<cell>.html, <cell>.svg   one record, its curves
    assets/report.css, report.js    style and the sortable tables
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from harness import episode_values
from harness.files import atomic_write_text
from harness.measure import mean_ci95
from harness.report import cellfigure, cellpage, pages, plots
from harness.report.data import ReportData, Table, parse_label
from harness.report.markup import CSS, JS, frame
from harness.results import slugify
from harness.specs import format_params

#: The list of the files the last report wrote, so the next one removes those it no longer writes.
MANIFEST = ".report-files"


@dataclass
class Site:
    """The files of a report, by site path, before they are written."""

    files: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, text: str) -> None:
        """Add the file `path` (relative to the site root); two files never share a path."""
        if path in self.files:
            raise AssertionError(f"two report files at {path}")
        self.files[path] = text


def _stem(text: str, taken: set[str]) -> str:
    """A file name for `text`, readable and distinct from those in `taken` (which it joins)."""
    stem = re.sub(r"[^A-Za-z0-9.=,+-]+", "_", text).strip("._")[:90] or "page"
    if stem in taken:
        stem = slugify(text, 70)
    taken.add(stem)
    return stem


def _record_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(record.get("cell_id")), str(record.get("fingerprint")), str(record.get("finished_at")))


def short_labels(labels: list[str]) -> list[str]:
    """Row labels for legends: hyper-parameters every row that has them sets alike are left out (the
    table shows the full labels), and so is any other that the labels stay distinct without, the
    longest first (`adjoint_checkpoints` where `adjoint` already tells the rows apart), unless a row would
    be left with its bare name (it would read as the defaults); where leaving out
    even the shared ones would make two labels equal, the full ones stay."""
    parsed = [parse_label(label) for label in labels]
    values: dict[str, set[str]] = {}
    for _, params in parsed:
        for key, value in params.items():
            values.setdefault(key, set()).add(value)

    def spelt(dropped: set[str]) -> list[str]:
        return [name + format_params({k: _Raw(v) for k, v in params.items() if k not in dropped})
                for name, params in parsed]

    distinct = len(set(labels))
    dropped = {key for key, seen in values.items() if len(seen) == 1}
    if len(set(spelt(dropped))) != distinct:
        return labels
    saved = {key: sum(len(key) + len(params[key]) + 2 for _, params in parsed if key in params) for key in values}
    for key in sorted(set(values) - dropped, key=lambda k: (-saved[k], k)):
        trial = dropped | {key}
        # Never down to a bare name a row did not have: `m` would read as the defaults.
        bare = any(params and not set(params) - trial for _, params in parsed)
        if not bare and len(set(spelt(trial))) == distinct:
            dropped.add(key)
    return spelt(dropped)


class _Raw(str):
    """A label value kept as printed (`format_params` prints str as is)."""


def _metric_axis(table: Table) -> str:
    attrs = table.frame.attrs
    label = attrs.get("metric_label") or str(attrs.get("metric", "metric")).replace("_", " ")
    return f"test {label} ({'higher' if attrs.get('higher_is_better') else 'lower'} is better)"


def _column(table: Table, name: str) -> list[float]:
    if name not in table.frame:
        return []
    return [
        float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else math.nan
        for v in table.frame[name].astype("float64")
    ]


def _validation_run(record: Mapping[str, Any]) -> list[tuple[float, float]]:
    """(iteration, validation metric) of each validation point of a record's learning curve."""
    return [
        (c["iteration"], c["val_metric"])
        for c in record.get("curve") or []
        if isinstance(c.get("iteration"), int) and isinstance(c.get("val_metric"), (int, float))
    ]


def table_plots(table: Table) -> list[tuple[str, str, str]]:
    """The figures of one table: (file suffix, svg text, caption) for each that has data to show."""
    if not len(table.frame) or "metric_mean" not in table.frame:
        return []
    names = table.frame["algorithm"] if "algorithm" in table.frame else range(len(table.frame))
    labels = short_labels([str(a) for a in names])
    higher = bool(table.frame.attrs.get("higher_is_better"))
    means, cis = _column(table, "metric_mean"), _column(table, "metric_ci95")
    ylabel, out = _metric_axis(table), []
    for column, suffix, xlabel, what in (
        ("meta_train_s", "time", "meta-train time (s)", "meta-train time"),
        ("peak_memory_mib", "memory", "peak memory (MiB)", "peak memory"),
    ):
        xs = _column(table, column)
        series = [
            plots.Series(label, i, [x], [y], [e])
            for i, (label, x, y, e) in enumerate(zip(labels, xs, means, cis, strict=True))
            if math.isfinite(x) and math.isfinite(y)
        ]
        if series:
            svg = plots.tradeoff_svg(
                series, higher_is_better=higher, xlabel=xlabel, ylabel=ylabel, title=f"metric against {what}"
            )
            out.append(
                (
                    suffix,
                    svg,
                    f"Test metric (95% interval as error bars) against {what}; the dashed "
                    f"line joins the Pareto front: rows no other row beats on both.",
                )
            )
    curves = [(labels[i], i, [_validation_run(r) for r in records]) for i, records in enumerate(table.rows)]
    if any(run for _, _, runs in curves for run in runs):
        label = ylabel.replace("test ", "validation ", 1)
        out.append(
            (
                "curves",
                plots.curves_svg(curves, ylabel=label, title="validation learning curves"),
                "Validation metric during meta-training: mean over seeds (faint: each seed).",
            )
        )
    steps = [_steps_series(labels[i], i, records) for i, records in enumerate(table.rows)]
    steps = [s for s in steps if s is not None]
    if any(len(s.x) > 1 for s in steps):
        out.append(
            (
                "steps",
                plots.steps_svg(steps, ylabel=ylabel, title="metric against test-time steps"),
                "Test metric after each number of adaptation steps on the support set (step 0: before "
                "adapting)"
                + (
                    "; band: 95% interval (over seeds where a row has several)."
                    if len(steps) <= plots.MAX_BANDS
                    else "."
                ),
            )
        )
    return out


def _steps_series(label: str, index: int, records: list[dict[str, Any]]) -> plots.Series | None:
    by_step: dict[int, list[tuple[float, float]]] = {}
    for record in records:
        for entry in (record.get("metric") or {}).get("per_step") or []:
            if isinstance(entry.get("step"), int) and isinstance(entry.get("mean"), (int, float)):
                by_step.setdefault(entry["step"], []).append((entry["mean"], entry.get("ci95") or math.nan))
    steps = sorted(s for s, v in by_step.items() if len(v) == len(records))
    if not steps:
        return None
    ys, errs = [], []
    for step in steps:
        values = by_step[step]
        mean, ci, _ = (
            mean_ci95([v[0] for v in values]) if len(values) > 1 else (values[0][0], values[0][1], 0)
        )
        ys.append(mean)
        errs.append(ci)
    return plots.Series(label, index, steps, ys, errs)


def build(data: ReportData, results_name: str) -> Site:
    """Every file of the report of `data` (`results_name`: the results folder, as the index names it)."""
    site = Site()
    for asset in (CSS, JS):
        site.add(asset, resources.files("harness.report").joinpath(asset).read_text(encoding="utf-8"))
    grid_pages, table_pages, cell_pages, cell_tables = {}, {}, {}, {}
    by_key: dict[tuple[str, str, str], str] = {}
    grid_stems: set[str] = set()
    cell_stems: set[str] = set()
    for name, info in data.grids.items():
        folder = f"grids/{_stem(name, grid_stems)}"
        grid_pages[name] = f"{folder}/index.html"
        stems = {"index"}
        for table in info.tables:
            table_pages[id(table)] = f"{folder}/{_stem(table.suite, stems)}.html"
        for record in info.records:
            key = _record_key(record)
            if key not in by_key:
                by_key[key] = f"cells/{_stem(key[0], cell_stems)}.html"
            cell_pages[id(record)] = by_key[key]
    for info in data.grids.values():  # the table rows' records are the grid's records: same pages
        for table in info.tables:
            for records in table.rows:
                for record in records:
                    target = by_key.get(_record_key(record))
                    if target:
                        cell_pages[id(record)] = target
                        cell_tables.setdefault(target, []).append(
                            (table_pages[id(table)], f"{table.suite} ({table.grid})")
                        )
    site.add(
        "index.html",
        frame(
            "index.html",
            "metaharness report",
            pages.index_body("index.html", data, results_name, grid_pages, table_pages),
        ),
    )
    for name, info in data.grids.items():
        page = grid_pages[name]
        site.add(page, frame(page, f"grid {name}", pages.grid_body(page, info, table_pages, cell_pages)))
        for table in info.tables:
            page = table_pages[id(table)]
            figures = []
            for suffix, svg, caption in table_plots(table):
                src = page.removesuffix(".html") + f"-{suffix}.svg"
                site.add(src, svg)
                figures.append((src, f"{suffix} plot of {table.suite}", caption))
            body = pages.table_body(page, table, cell_pages, figures, grid_pages[name])
            site.add(page, frame(page, table.suite, body, [(grid_pages[name], f"grid {name}")]))
    written: set[str] = set()
    for info in data.grids.values():
        for record in info.records:
            page = cell_pages[id(record)]
            if page in written:
                continue
            written.add(page)
            episodes = None
            with contextlib.suppress(ValueError):  # an unreadable entry: the page says the record has none
                episodes = episode_values.values(record)
            svg = cellfigure.cell_svg(record, episodes)
            src = page.removesuffix(".html") + ".svg" if svg else None
            if svg:
                site.add(src, svg)
            body = cellpage.cell_body(page, record, cell_tables.get(page, []), src, episodes)
            site.add(
                page,
                frame(page, str(record.get("cell_id")), body, [(grid_pages[info.name], f"grid {info.name}")]),
            )
    return site


def write(site: Site, out: Path) -> list[Path]:
    """Write the files of `site` under `out`; remove the files an earlier report there listed in its
    manifest and this one does not write (nothing else); return the paths written."""
    manifest = out / MANIFEST
    previous = manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []
    written = []
    for path, text in sorted(site.files.items()):
        target = out / path
        atomic_write_text(target, text)
        written.append(target)
    for old in sorted(set(previous) - set(site.files)):
        if old and ".." not in Path(old).parts and not Path(old).is_absolute():
            with contextlib.suppress(FileNotFoundError):
                (out / old).unlink()
    atomic_write_text(manifest, "".join(f"{p}\n" for p in sorted(site.files)))
    return written
