"""Tests for harness.leaderboard: grouping, ranking, seed aggregation, Markdown / CSV / LaTeX output."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import UsageError
from harness.leaderboard import build_tables, write_leaderboards
from harness.render import display_table, latex_escape, render_latex, render_markdown, render_terminal

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
    assert list(table["algorithm"]) == ["anil", "maml", "fomaml", "reptile"]  # one row each: bare names
    assert list(table["rank"]) == [1, 1, 2, 3]  # equal means share a rank; the next starts the next rank
    assert list(table["rank_label"]) == ["1", "1", "2", "3"]  # no marker: not tested (no per-episode values)
    assert any("no paired tests" in n for n in table.attrs["notes"])
    assert table.attrs["metric"] == "mse" and not table.attrs["higher_is_better"]
    assert "MSE ↓" in display_table(table).columns


def test_the_metric_is_printed_as_the_suite_labels_it_else_by_its_name() -> None:
    """Labels come from the records (the suite's `metric_label`), so tables stay functions of records;
    records written before suites declared labels print the metric's name."""
    kw = dict(suite="omniglot-runs", suite_config={}, metric="error_rate", higher=False, steps=0)
    labelled = build_tables([make_record("maml", label="error rate (%)", **kw)])[("smoke", "omniglot-runs")]
    assert labelled.attrs["metric_label"] == "error rate (%)"
    assert "error rate (%) ↓" in display_table(labelled).columns
    assert labelled.attrs["description"].startswith("error rate (%) (lower is better)")
    old = build_tables([make_record("maml", label=None, **kw)])[("smoke", "omniglot-runs")]
    assert "error rate ↓" in display_table(old).columns
    assert "mse ↓" in display_table(build_tables([make_record("maml", label=None)])[SINE]).columns


def test_rank_higher_is_better_for_accuracy() -> None:
    kw = dict(suite="omniglot", suite_config={"ways": 5, "shots": 1}, metric="accuracy", higher=True, steps=0)
    records = [make_record("maml", mean=0.95, **kw), make_record("protonet", {}, mean=0.98, **kw)]
    table = build_tables(records)[("smoke", "omniglot[shots=1,ways=5]")]
    assert list(table["algorithm"]) == ["protonet", "maml"]
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
    assert list(table["algorithm"]) == ["maml"] and table["seeds"].iloc[0] == 1
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
    assert list(csv["algorithm"]) == ["meta_sgd", "maml"]
    assert list(csv["cell_label"]) == ["meta_sgd", "maml[inner_lr=0.01]"]
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
    records = [make_record("maml", {"act": "relu|tanh"}), make_record("maml", {"act": "gelu"})]
    assert r"maml[act=relu\|tanh]" in render_markdown(build_tables(records)[SINE], "t")


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
    assert "== sinusoid[shots=10] (grid smoke) ==" in text and "| maml " in text
    assert "== glyphs (grid smoke) ==" in text and "(no completed cells)" in text and "boom" in text
    empty = tables[("smoke", "glyphs")]
    assert "no completed cells" in render_markdown(empty, "glyphs")
    assert r"\begin{tabular}" in render_latex(empty, "glyphs")
    assert render_terminal({}) == "" and build_tables([]) == {}


def test_a_grid_run_on_a_shared_machine_says_its_timings_are_indicative() -> None:
    table = build_tables([make_record(seed=0, exclusive=False), make_record(seed=1, exclusive=False)])[SINE]
    assert any("shared the machine" in n for n in table.attrs["notes"])
    alone = build_tables([make_record(seed=0)])[SINE]
    assert not any("shared the machine" in n for n in alone.attrs["notes"])


# --- Paired statistics, ties and labels on records made by the real record builder --------------------------

def episode_record(registry, algorithm: str, values, *, hparams: dict | None = None, seed: int = 0,
                   grid: str = "g", measurements: dict | None = None) -> dict:
    """A record as `harness.cells.build_record` writes it for a sinusoid cell whose test episodes had
    `values` (rows: test-time steps 0..k, columns: episodes), with the per-episode values kept."""
    import numpy as np

    from harness import episode_values
    from harness.cells import build_record, resolve_cell
    from harness.measure import mean_ci95
    from harness.specs import Budget, Cell

    values = np.atleast_2d(np.asarray(values, dtype=float))
    budget = Budget(iterations=10, test_episodes=values.shape[1])
    cell = Cell(algorithm, tuple(sorted((hparams or {}).items())), "sinusoid", (("shots", 10),), "cpu", seed,
                budget, grid)
    resolved = resolve_cell(cell, registry)
    mean, ci, std = mean_ci95(values[-1].tolist())
    metric = {"name": "mse", "label": "MSE", "higher_is_better": False, "mean": mean, "ci95": ci, "std": std,
              "n": values.shape[1], "final_step": values.shape[0] - 1,
              "per_step": [{"step": k, "mean": float(v.mean()), "ci95": ci} for k, v in enumerate(values)]}
    result = {"metric": metric, "timings": {"meta_train_s": 1.0, "time_per_iteration_s": 0.01},
              "memory": {"peak_bytes": 2**28}, "params": 1761, "measurements": measurements,
              "per_episode": episode_values.encode(values, seed=resolved["seeds"]["test"], source="sampled")}
    environment = {"torch": "2.13.0+cpu", "cpu": {"model": "AMD EPYC"}}
    outcome = {"status": "ok", "result": result, "environment": environment}
    return build_record(cell, resolved, outcome, mode="in-process", started_at="2026-11-23T07:00:00+00:00",
                        finished_at="2026-11-23T07:01:00+00:00")


def _episodes(shift: float, noise: float, seed: int, n: int = 60):
    """Final-step MSEs on n shared episodes: a common difficulty per episode, a shift, per-row noise."""
    import numpy as np

    difficulty = np.random.default_rng(0).gamma(2.0, 0.5, n)
    return [difficulty + shift + np.random.default_rng(100 + seed).normal(0, noise, n)]


def test_ties_and_markers_in_markdown_and_csv(registry, tmp_path: Path) -> None:
    records = [episode_record(registry, "maml", _episodes(0.0, 0.05, 1)),
               episode_record(registry, "fomaml", _episodes(0.005, 0.05, 2)),  # within noise: tied
               episode_record(registry, "pretrain", _episodes(0.8, 0.05, 3))]
    table = build_tables(records)[("g", "sinusoid[shots=10]")]
    assert list(table["algorithm"]) == ["fomaml", "maml", "pretrain"]  # fomaml's noise happens to help it
    assert list(table["rank_label"]) == ["1=", "1=", "2"]
    assert list(table["shared_rank"]) == [True, True, False]
    assert table["p_t_holm"].iloc[1] >= 0.05 and table["p_t_holm"].iloc[2] < 1e-6
    assert table["paired_episodes"].iloc[2] == 60 and table["delta_ci_low"].iloc[2] > 0.7
    md = render_markdown(table, "t", table.attrs["notes"], table.attrs["description"])
    assert "|     1= | " in md and "Δ vs best" in md and "p (t, Holm)" in md and "<0.001" in md
    assert "tie at p ≥ 0.05" in md and "paired t-test" in md
    paths = write_leaderboards(records, tmp_path)
    csv = pd.read_csv(next(p for p in paths if p.suffix == ".csv"))
    assert list(csv["rank_label"]) == ["1=", "1=", "2"] and list(csv["rank"]) == [1, 1, 2]
    assert {"delta_vs_best", "delta_ci_low", "delta_ci_high", "p_t", "p_t_holm", "p_wilcoxon",
            "p_wilcoxon_holm", "hparams", "budget"} <= set(csv)
    tex = next(p for p in paths if p.suffix == ".tex").read_text()
    assert "1= &" in tex and r"$\Delta$ vs best" in tex
    assert r"\footnotesize" in tex and "Configurations:" in tex  # visible under the table


def test_tables_are_reproducible_byte_for_byte(registry, tmp_path: Path) -> None:
    records = [episode_record(registry, name, _episodes(shift, 0.1, seed + 10 * i), seed=seed)
               for i, (name, shift) in enumerate([("maml", 0.0), ("fomaml", 0.05)]) for seed in (0, 1, 2)]
    one, two = tmp_path / "one", tmp_path / "two"
    write_leaderboards(records, one)
    write_leaderboards(list(reversed(records)), two)
    first = {p.name: p.read_bytes() for p in one.rglob("*.*")}
    assert first == {p.name: p.read_bytes() for p in two.rglob("*.*")}
    table = build_tables(records)[("g", "sinusoid[shots=10]")]
    assert set(table["ci_over"]) == {"seeds+episodes"} and (table["ci_low"] < table["metric_mean"]).all()
    assert "two-way bootstrap interval resampling seeds and test episodes" in table.attrs["description"]


def test_labels_show_only_what_differs_and_never_neutral_settings(registry) -> None:
    from harness.publish import neutral_hparams

    values = _episodes(0.0, 0.05, 1)
    records = [episode_record(registry, "maml", values, hparams={"inner_lr": 0.01, "vmap_tasks": False}),
               episode_record(registry, "maml", values, hparams={"inner_lr": 0.02}),
               episode_record(registry, "fomaml", values, hparams={"inner_lr": 0.05})]
    neutral = neutral_hparams(registry)
    assert "vmap_tasks" in neutral["maml"]
    table = build_tables(records, neutral=neutral)[("g", "sinusoid[shots=10]")]
    assert sorted(table["algorithm"]) == ["fomaml", "maml[inner_lr=0.01]", "maml[inner_lr=0.02]"]
    without = build_tables(records)[("g", "sinusoid[shots=10]")]  # no registry: nothing known neutral
    assert "maml[inner_lr=0.01,vmap_tasks=False]" in set(without["algorithm"])
    row = table.set_index("algorithm").loc["maml[inner_lr=0.01]"]
    assert '"vmap_tasks": false' in row["hparams"]  # the CSV keeps the full configuration
    assert row["cell_label"] == "maml[inner_lr=0.01,vmap_tasks=False]"
    md = render_markdown(table, "t")
    assert "- maml[inner_lr=0.01]: first_order=False, inner_lr=0.01," in md and "vmap_tasks=False" in md
    assert "- fomaml: first_order=True, inner_lr=0.05" in md and "- budget: deterministic=True" in md
    # Rows that only a neutral setting tells apart keep it, so no two rows read the same.
    twins = [episode_record(registry, "maml", values, hparams={"vmap_tasks": flag}) for flag in (True, False)]
    labels = build_tables(twins, neutral=neutral)[("g", "sinusoid[shots=10]")]["algorithm"]
    assert sorted(labels) == ["maml[vmap_tasks=False]", "maml[vmap_tasks=True]"]


def test_old_records_without_per_episode_values_still_build_with_a_note(registry) -> None:
    new = [episode_record(registry, "maml", _episodes(0.0, 0.05, 1)),
           episode_record(registry, "fomaml", _episodes(0.01, 0.05, 2))]
    old = episode_record(registry, "pretrain", _episodes(0.5, 0.05, 3))
    old["per_episode"] = None  # as records written before per-episode values
    table = build_tables([*new, old])[("g", "sinusoid[shots=10]")]
    shown = display_table(table)
    assert list(table["algorithm"])[-1] == "pretrain" and list(shown["rank"])[-1] == "2"
    assert list(shown["p (t, Holm)"])[-1] == "n/a" and list(shown["Δ vs best"])[-1] == ""
    assert "not tested, ranked by mean and never tied: pretrain (no per-episode values in its records)." in \
        table.attrs["notes"]
    assert table["stats_note"].iloc[-1] == "no per-episode values in its records"


def test_measurements_become_columns_only_when_recorded(registry) -> None:
    lipschitz = {"lipschitz": {"mean": 3.2, "ci95": 0.4, "n": 60, "label": "Lipschitz",
                               "higher_is_better": False}}
    records = [episode_record(registry, "maml", _episodes(0.0, 0.05, 1), measurements=lipschitz, seed=s)
               for s in (0, 1)]
    records[1]["measurements"] = {"lipschitz": {**lipschitz["lipschitz"], "mean": 3.6}}
    table = build_tables(records)[("g", "sinusoid[shots=10]")]
    assert table["measurement_lipschitz_mean"].iloc[0] == pytest.approx(3.4)
    assert table["measurement_lipschitz_ci95"].iloc[0] == pytest.approx(12.706 * 0.2)  # t(1) sd/sqrt(2)
    assert display_table(table)["Lipschitz ↓"].iloc[0] == "3.4 ± 2.5"
    plain = build_tables([episode_record(registry, "maml", _episodes(0.0, 0.05, 1))])
    plain = plain[("g", "sinusoid[shots=10]")]
    assert not [c for c in plain.columns if c.startswith("measurement_")]


def test_the_tie_test_and_alpha_are_options(registry) -> None:
    records = [episode_record(registry, "maml", _episodes(0.0, 0.05, 1)),
               episode_record(registry, "fomaml", _episodes(0.03, 0.05, 2))]
    key = ("g", "sinusoid[shots=10]")
    wilcoxon = build_tables(records, test="wilcoxon", alpha=0.01)[key]
    assert wilcoxon.attrs["test"] == "wilcoxon"
    assert "Wilcoxon signed-rank test on the shared" in wilcoxon.attrs["notes"][0]
    assert wilcoxon["rank_p_holm"].iloc[1] == pytest.approx(wilcoxon["p_wilcoxon_holm"].iloc[1])
    with pytest.raises(UsageError, match=r"unknown test 'anova'.*valid: t, wilcoxon"):
        build_tables(records, test="anova")
    with pytest.raises(UsageError, match="alpha must be a number strictly between 0 and 1"):
        build_tables(records, alpha=0)
