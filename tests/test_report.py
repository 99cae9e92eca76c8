"""harness.report: the static HTML report of a real (tiny) results store, opened in a real headless chromium.

The store comes from a real grid run (three algorithms, two seeds, a skipped pair); the browser checks that
every page loads without console or page errors, that the tables and figures are there and drawn, and that
a click on a column header sorts the rows. Screenshots are kept in the test's folder and, when
HARNESS_ARTEFACTS names a folder, copied there.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

from harness import cli
from harness.grid import load_grid
from harness.publish import grid_tables
from harness.render import display_table
from harness.report.data import gather, match_rows, parse_label
from harness.report.plots import minify_svg, pareto_front
from harness.report.site import MANIFEST, Site, short_labels, table_plots, write
from harness.results import ResultStore
from harness.session import run_grid

GRID = """name = "report-tiny"
backends = ["cpu"]
seeds = 2

[budget]
iterations = 8
val_interval = 4
val_episodes = 4
test_episodes = 6
timeout = 120
threads = 1

[[block]]
algorithms = ["pretrain", "fomaml", "reptile", "protonet"]
suites = [{ name = "sinusoid", shots = 5 }]
"""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL_HINT = (
    "run scripts/install_chromium.sh (Debian/Ubuntu: `apt-get install chromium`; it also installs the "
    "playwright package, which drives the system's chromium)"
)


@pytest.fixture(scope="module")
def store(registry, tmp_path_factory) -> Path:
    """A results store made by a real run of GRID (6 cells run in-process, 2 skipped), its definition kept."""
    root = tmp_path_factory.mktemp("report-store")
    grid_file = root / "report-tiny.toml"
    grid_file.write_text(GRID)
    results = ResultStore(root / "results")
    grid = load_grid(str(grid_file), registry)
    run_grid(grid, registry, results, in_process=True, progress=False)
    results.save_grid(
        grid.name, GRID
    )  # as `harness run` does: the report finds the grid from the store alone
    return root / "results"


@pytest.fixture(scope="module")
def site(store, tmp_path_factory) -> Path:
    """The report of `store`, written by the `harness report` command (in this process)."""
    out = tmp_path_factory.mktemp("report-site") / "report"
    assert cli.main(["report", "--results", str(store), "--out", str(out)]) == 0
    return out


def _table_page(site: Path) -> Path:
    return site / "grids" / "report-tiny" / "sinusoid_shots=5.html"


def test_pareto_front_by_hand():
    # cost x, metric y (higher better): (1, .5) (2, .7) (2, .6) (3, .7) (4, .9) (nan, 1.0) (5, .8)
    xs = [1, 2, 2, 3, 4, math.nan, 5]
    ys = [0.5, 0.7, 0.6, 0.7, 0.9, 1.0, 0.8]
    assert pareto_front(xs, ys, higher_is_better=True) == [0, 1, 4]  # (3, .7) is dominated by (2, .7)
    assert pareto_front(xs, ys, higher_is_better=False) == [0]  # lower better: the cheapest is also the best
    assert pareto_front([3, 1, 2], [3.0, 1.0, 2.0], higher_is_better=False) == [1]
    assert pareto_front([1, 1], [2.0, 2.0], higher_is_better=True) == [0, 1]  # equal points dominate neither


def test_labels_and_rows_match_whatever_the_label_shows():
    assert parse_label("maml[inner_lr=0.4,shape=(1,2),first_order=False]") == (
        "maml",
        {"inner_lr": "0.4", "shape": "(1,2)", "first_order": "False"},
    )
    assert parse_label("pretrain") == ("pretrain", {})

    def record(algorithm, seed, **hparams):
        return {
            "status": "ok",
            "cell_id": f"{algorithm}{hparams}/s/cpu/seed={seed}",
            "cell": {"algorithm": algorithm, "backend": "cpu", "seed": seed, "hparams": hparams},
            "config": {"algorithm": {"hparams": {"inner_lr": 0.4, "steps": 1, **hparams}}},
        }

    records = [
        record("maml", 1, inner_lr=0.1),
        record("maml", 0),
        record("maml", 0, inner_lr=0.1),
        record("pretrain", 0),
        {**record("pretrain", 1), "status": "failed"},
    ]
    frame = pd.DataFrame({"algorithm": ["maml[inner_lr=0.1]", "maml", "pretrain"], "backend": ["cpu"] * 3})
    rows = match_rows(frame, records)
    # maml's default-valued row shows no inner_lr: it still gets only the record with inner_lr 0.4
    assert [[(r["cell"]["algorithm"], r["cell"]["seed"]) for r in row] for row in rows] == [
        [("maml", 0), ("maml", 1)],
        [("maml", 0)],
        [("pretrain", 0)],
    ]
    assert rows[1][0]["cell"]["hparams"] == {}
    assert short_labels(["maml[a=1,b=2]", "maml[a=1,b=3]", "anil[a=1]"]) == ["maml[b=2]", "maml[b=3]", "anil"]
    assert short_labels(["maml[a=1]", "maml"]) == ["maml[a=1]", "maml"]  # dropping a=1 would make them equal
    # A setting that another already tells apart goes too: adjoint_checkpoints follows adjoint here.
    ode = ["ode[adjoint=False,adjoint_checkpoints=False,solver=euler]", "ode[adjoint=False,adjoint_checkpoints=False,"
           "solver=rk4]", "ode[adjoint=True,adjoint_checkpoints=True,solver=rk4]"]
    assert short_labels(ode) == ["ode[adjoint=False,solver=euler]", "ode[adjoint=False,solver=rk4]",
                                 "ode[adjoint=True,solver=rk4]"]
    # ... but no row is cut to a bare name that would read as the defaults.
    assert short_labels(["m[a=1,b=1]", "m[a=2,b=1]", "m[b=2]"]) == ["m[a=1,b=1]", "m[a=2,b=1]", "m[b=2]"]


def test_minified_svg_draws_the_same_text_and_is_valid_xml():
    svg = (
        '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10.123456 5">\n'
        ' <metadata>x</metadata>\n <defs>\n  <style type="text/css">*{stroke: red}</style>\n </defs>\n'
        ' <g id="axes_1">\n  <path d="M 1.234567 2.345678 L 3.5 4" style="fill: none"/>\n'
        '  <path d="M 0 0" style="fill: none"/>\n'
        "  <text style=\"font-family: 'DejaVu Sans', 'Arial', sans-serif\" x=\"1.23456\" y=\"2\">"
        "lr=0.0012345</text>\n"
        " </g>\n</svg>\n"
    )
    small = minify_svg(svg)
    root = ET.fromstring(small.split("?>", 1)[1])
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f"{ns}metadata") is None
    assert root.get("viewBox") == "0 0 10.12 5"
    text = root.find(f".//{ns}text")
    assert text.text == "lr=0.0012345" and text.get("x") == "1.23"  # the drawn text is never rounded
    paths = root.findall(f".//{ns}path")
    assert paths[0].get("d") == "M 1.23 2.34 L 3.5 4"
    assert paths[0].get("class") == paths[1].get("class") == "s0" and ".s0{fill: none}" in small


def test_the_report_holds_every_table_and_cell_and_nothing_of_this_machine(site, store):
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert pages[:3] == [
        "cells/fomaml_sinusoid_shots=5_cpu_seed=0.html",
        "cells/fomaml_sinusoid_shots=5_cpu_seed=1.html",
        "cells/pretrain_sinusoid_shots=5_cpu_seed=0.html",
    ]
    cells = [p for p in pages if p.startswith("cells/")]
    assert len(cells) == 8  # every record of the grid, the skipped protonet cells too
    assert {"index.html", "grids/report-tiny/index.html", "grids/report-tiny/sinusoid_shots=5.html"} <= set(
        pages
    )
    figures = sorted(p.name for p in (site / "grids" / "report-tiny").glob("*.svg"))
    assert figures == [f"sinusoid_shots=5-{k}.svg" for k in ("curves", "memory", "steps", "time")]
    for svg in site.rglob("*.svg"):
        ET.fromstring(svg.read_text().split("?>", 1)[1])  # well-formed
        assert svg.stat().st_size < 40_000
    skipped = (site / "cells" / "protonet_sinusoid_shots=5_cpu_seed=0.html").read_text()
    assert "skipped" in skipped and "supports classification tasks" in skipped
    for path in site.rglob("*"):  # relocatable: relative links only, no folder of this machine
        if path.is_file() and path.suffix in (".html", ".svg", ".css", ".js"):
            text = path.read_text()
            assert str(store.parent) not in text and "http://" not in text.replace("http://www.w3.org", "")
            assert "https://" not in text


def test_a_new_report_removes_only_the_files_of_the_earlier_one(tmp_path):
    out = tmp_path / "site"
    write(Site({"index.html": "first", "cells/gone.html": "a cell that has left the store"}), out)
    (out / "cells" / "mine.txt").write_text("not the report's")
    write(Site({"index.html": "second"}), out)
    assert (out / "index.html").read_text() == "second" and not (out / "cells" / "gone.html").exists()
    assert (out / "cells" / "mine.txt").read_text() == "not the report's"
    assert (out / MANIFEST).read_text() == "index.html\n"


def test_the_grid_named_gives_the_same_tables_and_figures_drawn_again_are_identical(site, store, registry):
    named = gather(["report-tiny"], registry, ResultStore(store))  # the definition the store keeps
    everything = gather([], registry, ResultStore(store))
    assert list(named.grids) == list(everything.grids) == ["report-tiny"]
    (table,) = named.grids["report-tiny"].tables
    assert table.frame.equals(everything.grids["report-tiny"].tables[0].frame)
    assert [len(records) for records in table.rows] == [2, 2, 2]  # each row: its two seeds' records
    for suffix, svg, _ in table_plots(table):  # a rebuilt report is byte for byte the committed one
        assert (site / "grids" / "report-tiny" / f"sinusoid_shots=5-{suffix}.svg").read_text() == svg


def test_bad_input_is_refused_before_anything_is_written(store, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli.main(["report", "--results", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert f"results directory {missing} does not exist" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["report", "--results", str(store), "--out", str(a_file)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["report", "--results", str(store), "--out", str(store / "site")]) == 2
    assert "inside the results directory" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.tex").write_text("x")
    assert cli.main(["report", "--results", str(store), "--out", str(busy)]) == 2
    assert "not a harness report" in capsys.readouterr().err
    assert (
        cli.main(["report", "--results", str(store), "--out", str(tmp_path / "r"), "--grid", "no-such"]) == 2
    )
    assert not (tmp_path / "r").exists()


def _numbers(texts: list[str]) -> list[float]:
    return [float(re.match(r"[-+]?[\d.]+(?:e[-+]?\d+)?", t.replace(",", ""))[0]) for t in texts]


@pytest.fixture(scope="module")  # module scope, first in the test's arguments: set up before `site`
def sync_api():
    """playwright's synchronous API, driving the system's chromium; skip (before any report is built)
    when either is missing."""
    if CHROMIUM is None:
        pytest.skip(f"chromium is not on PATH: {INSTALL_HINT}")
    return pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {INSTALL_HINT}")


def test_the_report_in_a_headless_browser(sync_api, site, store, registry, tmp_path):
    tables, _ = grid_tables(["report-tiny"], registry, ResultStore(store))
    expected = display_table(tables[("report-tiny", "sinusoid[shots=5]")])
    shots = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        problems: list[str] = []
        page.on(
            "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))

        def visit(path: Path, name: str) -> None:
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                ".map(i => i.getAttribute('src'))"
            )
            assert broken == [], f"{name}: images not drawn: {broken}"
            shots.append(tmp_path / f"report-{name}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

        visit(site / "index.html", "index")
        assert page.locator("a", has_text="sinusoid[shots=5]").count() == 1
        page.locator("a", has_text="sinusoid[shots=5]").click()  # the index links to the table page
        page.wait_for_load_state("load")
        assert Path(page.url.removeprefix("file://")).name == "sinusoid_shots=5.html"
        visit(_table_page(site), "table")
        assert page.locator("img").count() == 4
        headers = page.locator("#leaderboard thead th").all_inner_texts()
        headers = [h.replace("⇅", "").replace("▲", "").replace("▼", "").strip() for h in headers]
        assert [h for h in headers if h != "cells"] == list(expected.columns)
        rows = page.locator("#leaderboard tbody tr")
        shown = [
            [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())
        ]
        assert [[v for j, v in enumerate(row) if headers[j] != "cells"] for row in shown] == expected.astype(
            str
        ).values.tolist()  # the same table as `harness leaderboard`
        metric = next(i for i, h in enumerate(headers) if h.startswith("MSE ↓"))
        header = page.locator("#leaderboard thead th").nth(metric)
        column = f"#leaderboard tbody tr td:nth-child({metric + 1})"
        header.click()
        ascending = _numbers(page.locator(column).all_inner_texts())
        assert ascending == sorted(ascending) and header.get_attribute("aria-sort") == "ascending"
        header.click()
        descending = _numbers(page.locator(column).all_inner_texts())
        assert descending == sorted(ascending, reverse=True) and descending != ascending
        algorithm = page.locator("#leaderboard thead th").nth(headers.index("algorithm"))
        algorithm.press("Enter")  # the keyboard sorts too
        names = page.locator(
            f"#leaderboard tbody tr td:nth-child({headers.index('algorithm') + 1})"
        ).all_inner_texts()
        assert [n.strip() for n in names] == sorted(n.strip() for n in names)
        page.screenshot(path=str(tmp_path / "report-table-sorted.png"), full_page=True)
        shots.append(tmp_path / "report-table-sorted.png")
        page.locator("#leaderboard a", has_text="seed 1").first.click()  # a row links to its cells' pages
        page.wait_for_load_state("load")
        assert "/cells/" in page.url
        visit(site / "cells" / "fomaml_sinusoid_shots=5_cpu_seed=0.html", "cell")
        assert page.locator("img").count() == 1 and page.locator("h2", has_text="Configuration").count() == 1
        assert page.locator("text=per-episode values").count() == 1
        visit(site / "grids" / "report-tiny" / "index.html", "grid")
        assert page.locator("tbody tr").count() == 1 + 8  # its one table, its eight cells
        browser.close()
    assert problems == []
    artefacts = os.environ.get("HARNESS_ARTEFACTS")
    if artefacts:
        Path(artefacts).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy2(shot, Path(artefacts) / shot.name)
    assert all(shot.stat().st_size > 10_000 for shot in shots)
