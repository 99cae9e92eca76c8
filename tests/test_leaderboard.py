"""Tests for harness.leaderboard: grouping, ranking, seed aggregation, Markdown / CSV / LaTeX output."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import UsageError
from harness.leaderboard import (
    build_tables,
    display_table,
    latex_escape,
    render_latex,
    render_markdown,
    render_terminal,
    write_leaderboards,
)

try:  # tests/ is not a package: pytest puts it on sys.path (rootdir-relative import if it becomes one)
    from test_results import make_record
except ImportError:  # pragma: no cover
    from tests.test_results import make_record

SINE = ("smoke", "sinusoid[shots=10]")


def test_rank_lower_is_better_for_mse() -> None:
    records = [
        make_record("maml", mean=0.35, label="MSE"),
        make_record("reptile", {}, mean=0.50, label="MSE"),
        make_record("anil", {}, mean=0.35, label="MSE"),
        make_record("fomaml", {}, mean=0.40, label="MSE"),
    ]
    table = build_tables(records)[SINE]
    assert list(table["algorithm"]) == ["anil", "maml[inner_lr=0.01]", "fomaml", "reptile"]
    assert list(table["rank"]) == [1, 1, 3, 4]  # ties share a rank
    assert table.attrs["metric"] == "mse" and not table.attrs["higher_is_better"]
    assert "MSE ↓" in display_table(table).columns


def test_the_metric_is_printed_as_the_suite_labels_it_else_by_its_name() -> None:
    """Labels come from the records (the suite's `metric_label`), so tables stay functions of records;
    records written before suites declared labels print the metric's name."""
    kw = dict(suite="omniglot-runs", suite_config={}, metric="error_rate", higher=False, steps=0)
    labelled = build_tables([make_record("maml", label="error rate (%)", **kw)])[("smoke", "omniglot-runs")]
    assert labelled.attrs["metric_label"] == "error rate (%)" and "error rate (%) ↓" in display_table(labelled).columns
    assert labelled.attrs["description"].startswith("error rate (%) (lower is better)")
    old = build_tables([make_record("maml", label=None, **kw)])[("smoke", "omniglot-runs")]
    assert "error rate ↓" in display_table(old).columns
    assert "mse ↓" in display_table(build_tables([make_record("maml", label=None)])[SINE]).columns


def test_rank_higher_is_better_for_accuracy() -> None:
    kw = dict(suite="omniglot", suite_config={"ways": 5, "shots": 1}, metric="accuracy", higher=True, steps=0)
    records = [make_record("maml", mean=0.95, **kw), make_record("protonet", {}, mean=0.98, **kw)]
    table = build_tables(records)[("smoke", "omniglot[shots=1,ways=5]")]
    assert list(table["algorithm"]) == ["protonet", "maml[inner_lr=0.01]"]
    assert list(table["rank"]) == [1, 2]
    shown = display_table(table)
    assert "accuracy ↑" in shown.columns
    assert not any(c.startswith("accuracy@") for c in shown.columns)  # step 0 only: no step columns


def test_three_seeds_mean_and_t_interval_over_seeds() -> None:
    means = [0.30, 0.36, 0.39]
    records = [make_record(seed=s, mean=m, ci95=0.02 + 0.01 * s) for s, m in enumerate(means)]
    row = build_tables(records)[SINE].iloc[0]
    mean = sum(means) / 3
    sd = math.sqrt(sum((m - mean) ** 2 for m in means) / 2)
    assert sd == pytest.approx(statistics.stdev(means))
    assert row["seeds"] == 3
    assert row["metric_mean"] == pytest.approx(0.35)
    assert row["metric_ci95"] == pytest.approx(4.303 * sd / math.sqrt(3))  # t(0.975, 2 dof) = 4.303
    assert row["metric_ci95"] == pytest.approx(0.11382, abs=1e-4)
    assert row["ci_over"] == "seeds"
    assert row["episode_ci95"] == pytest.approx(0.03)
    shown = display_table(build_tables(records)[SINE])
    assert shown["MSE ↓"].iloc[0] == "0.35 ± 0.11" and shown["episode CI"].iloc[0] == "0.030"


def test_one_seed_uses_episode_ci() -> None:
    table = build_tables([make_record(mean=0.352, ci95=0.021)])[SINE]
    assert table["ci_over"].iloc[0] == "episodes"
    shown = display_table(table)
    assert shown["MSE ↓"].iloc[0] == "0.352 ± 0.021"
    assert "episode CI" not in shown.columns
    assert [c for c in shown.columns if c.startswith("MSE@")] == ["MSE@1", "MSE@5", "MSE@10"]
    assert shown["MSE@1"].iloc[0] == "1.25"


def test_latest_record_per_cell_wins_regardless_of_input_order() -> None:
    new = make_record(mean=0.2, finished_at="2026-11-23T09:00:00+00:00")
    old = make_record(mean=0.9, finished_at="2026-11-23T07:00:00+00:00")
    assert build_tables([new, old])[SINE]["metric_mean"].iloc[0] == pytest.approx(0.2)
    failed_later = make_record(status="failed", reason="CUDA OOM", finished_at="2026-11-23T10:00:00+00:00")
    table = build_tables([new, old, failed_later])[SINE]
    assert len(table) == 0
    assert "CUDA OOM" in table.attrs["notes"][-1]


def test_failed_cells_are_notes_not_rows() -> None:
    records = [
        make_record("maml", seed=0),
        make_record("maml", seed=1, status="timeout", reason="exceeded 1800 s"),
        make_record("metasgd", {}, status="skipped", reason="needs a GPU"),
    ]
    table = build_tables(records)[SINE]
    assert list(table["algorithm"]) == ["maml[inner_lr=0.01]"] and table["seeds"].iloc[0] == 1
    note = table.attrs["notes"][-1]
    assert "timeout (exceeded 1800 s)" in note and "skipped (needs a GPU)" in note
    md = render_markdown(table, "t", table.attrs["notes"], table.attrs["description"])
    assert "needs a GPU" in md


def test_tables_split_by_grid_suite_and_backend_rows() -> None:
    records = [
        make_record(grid="smoke"),
        make_record(grid="full"),
        make_record(suite_config={"shots": 5}),
        make_record(backend="cuda"),
        make_record(grid=""),
    ]
    tables = build_tables(records)
    assert set(tables) == {
        SINE,
        ("full", "sinusoid[shots=10]"),
        ("smoke", "sinusoid[shots=5]"),
        ("adhoc", "sinusoid[shots=10]"),
    }
    assert sorted(tables[SINE]["backend"]) == ["cpu", "cuda"]


def test_reported_column() -> None:
    records = [
        make_record("maml", {}, suite_config={"shots": 5}),
        make_record("reptile", {}, suite_config={"shots": 5}),
    ]
    table = build_tables(records, reported={("sinusoid", "maml"): "0.67 / 0.38 / 0.35"})[
        ("smoke", "sinusoid[shots=5]")
    ]
    assert dict(zip(table["algorithm"], table["reported"], strict=True)) == {
        "maml": "0.67 / 0.38 / 0.35",
        "reptile": "",
    }
    assert "reported" not in build_tables(records)[("smoke", "sinusoid[shots=5]")].columns


def test_description_and_concurrency_note() -> None:
    records = [make_record(seed=0), make_record(seed=1, exclusive=False)]
    table = build_tables(records)[SINE]
    text = table.attrs["description"]
    assert (
        "600 test episodes" in text and "AMD EPYC" in text and "torch 2.13.0+cpu" in text and "seeds" in text
    )
    assert any("concurrently" in n for n in table.attrs["notes"])


def test_write_leaderboards_files_parse(tmp_path: Path) -> None:
    records = [make_record("maml", seed=s, mean=0.35 + 0.01 * s) for s in range(2)]
    records += [
        make_record("meta_sgd", {}, mean=0.30),
        make_record("anil", {}, status="failed", reason="50% NaN"),
    ]
    paths = write_leaderboards(records, tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    stem = "smoke/sinusoid_shots=10"
    assert names == sorted([f"{stem}.md", f"{stem}.csv", f"{stem}.tex", "smoke/README.md"])
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]

    csv = pd.read_csv(tmp_path / f"{stem}.csv")
    assert list(csv["algorithm"]) == ["meta_sgd", "maml[inner_lr=0.01]"]
    assert csv["metric_mean"].tolist() == pytest.approx([0.30, 0.355])
    assert {"metric_ci95", "episode_ci95", "time_per_iter_ms", "peak_memory_mib", "params", "rank"} <= set(
        csv
    )
    assert csv["params"].tolist() == [1761, 1761] and csv["time_per_iter_ms"].tolist() == pytest.approx(
        [12, 12]
    )

    md = (tmp_path / f"{stem}.md").read_text()
    assert md.startswith("# sinusoid[shots=10] — grid smoke\n")
    assert (
        "on 600 test episodes per seed" in md
        and "MSE ↓ |" in md
        and "0.300 ± 0.020" in md
        and "50% NaN" in md
    )

    tex = (tmp_path / f"{stem}.tex").read_text()
    assert r"\pm" in tex and r"$\downarrow$" in tex and r"meta\_sgd" in tex and r"50\% NaN" not in tex
    assert "\n% cells without a result: anil" in tex  # notes are comments, not table content
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert "meta_sgd" not in body and "±" not in body and "↓" not in body and "—" not in body

    readme = (tmp_path / "smoke" / "README.md").read_text()
    assert "[md](sinusoid_shots=10.md)" in readme and "meta_sgd" in readme


def test_write_leaderboards_selected_formats_and_overwrite(tmp_path: Path) -> None:
    write_leaderboards([make_record(mean=0.9)], tmp_path, formats=["csv"])
    paths = write_leaderboards([make_record(mean=0.1)], tmp_path, formats="csv")
    assert sorted(p.suffix for p in paths) == [".csv", ".md"]  # the table and the README index
    assert pd.read_csv(paths[0])["metric_mean"].iloc[0] == pytest.approx(0.1)


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"'html'.*valid: md, csv, latex"):
        write_leaderboards([make_record()], tmp_path, formats=("md", "html"))
    assert not any(tmp_path.iterdir())


def test_markdown_escapes_pipes() -> None:
    table = build_tables([make_record("maml", {"act": "relu|tanh"})])[SINE]
    assert r"maml[act=relu\|tanh]" in render_markdown(table, "t")


def test_latex_escape() -> None:
    assert (
        latex_escape("a_b & 5% #1 {x} ~ ^ \\ $")
        == r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{} \$"
    )
    assert latex_escape("0.35 ± 0.02 ↑") == r"0.35 $\pm$ 0.02 $\uparrow$"


def test_render_terminal_and_empty_tables() -> None:
    tables = build_tables(
        [make_record(), make_record("x", {}, suite="glyphs", suite_config={}, status="failed", reason="boom")]
    )
    text = render_terminal(tables)
    assert "== sinusoid[shots=10] (grid smoke) ==" in text and "maml[inner_lr=0.01]" in text
    assert "== glyphs (grid smoke) ==" in text and "(no completed cells)" in text and "boom" in text
    empty = tables[("smoke", "glyphs")]
    assert "no completed cells" in render_markdown(empty, "glyphs")
    assert r"\begin{tabular}" in render_latex(empty, "glyphs")
    assert render_terminal({}) == "" and build_tables([]) == {}


def test_a_grid_run_on_a_shared_machine_says_its_timings_are_indicative() -> None:
    table = build_tables([make_record(seed=0, exclusive=False), make_record(seed=1, exclusive=False)])[SINE]
    assert any("shared the machine" in n for n in table.attrs["notes"])
    assert not any("shared the machine" in n for n in build_tables([make_record(seed=0)])[SINE].attrs["notes"])
