"""harness.publish: a grid's tables come from its cells' records, whichever run or grid wrote them."""

from __future__ import annotations

import os

import pytest

from harness import cli
from harness.errors import UsageError
from harness.grid import load_grid
from harness.publish import grid_records, grid_tables, neutral_hparams
from harness.results import ResultStore
from harness.session import run_grid
from tests.conftest import REPO

TWO = '[[block]]\nalgorithms = ["pretrain", "fomaml"]\nsuites = [{ name = "sinusoid", shots = 5 }]\n'


def test_the_committed_leaderboards_are_what_the_committed_records_give(tmp_path, capsys):
    """Every committed table is rebuilt, byte for byte, from the committed records: none of them has
    stopped counting (a change of fingerprints would empty the published tables)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert cli.main(["leaderboard", "--results", "results", "--out", str(tmp_path)]) == 0
    finally:
        os.chdir(cwd)
    assert "warning" not in capsys.readouterr().err
    published = REPO / "leaderboards"
    committed = {p.relative_to(published): p.read_text() for p in published.rglob("*.*")}
    rebuilt = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.*")}
    assert rebuilt == committed


def test_a_grid_counts_the_records_of_its_cells_whoever_ran_them(registry, write_grid, tmp_path):
    store = ResultStore(tmp_path / "results")
    first = load_grid(str(write_grid(TWO, name="first")), registry)
    run_grid(first, registry, store, in_process=True, progress=False)
    second_path = write_grid(TWO.replace('"fomaml"', '"maml"'), name="second")
    found = grid_records(str(second_path), registry, store)
    assert [r["cell"]["algorithm"] for r in found.records] == ["pretrain"]  # first's record, counted here
    assert found.records[0]["cell"]["grid"] == "second"  # as this grid's cell
    assert [c.algorithm for c in found.pending] == ["maml"]


def test_records_of_an_older_configuration_do_not_count(registry, write_grid, tmp_path):
    store = ResultStore(tmp_path / "results")
    path = write_grid(TWO, name="g")
    run_grid(load_grid(str(path), registry), registry, store, in_process=True, progress=False)
    path.write_text(path.read_text().replace("iterations = 12", "iterations = 14"))
    found = grid_records(str(path), registry, store)
    assert found.records == [] and len(found.pending) == 2


def test_cells_a_filtered_run_added_count_for_the_grid(faulty_registry, write_grid, tmp_path):
    store = ResultStore(tmp_path / "results")
    path = write_grid(TWO, name="g")
    added = load_grid(str(path), faulty_registry, algorithms=["healthy"], seeds=[3])
    run_grid(added, faulty_registry, store, in_process=True, progress=False)
    found = grid_records(str(path), faulty_registry, store)
    assert [(r["cell"]["algorithm"], r["cell"]["seed"]) for r in found.records] == [("healthy", 3)]
    assert sorted(c.algorithm for c in found.pending) == ["fomaml", "pretrain"]
    elsewhere = grid_records(str(write_grid(TWO, name="h")), faulty_registry, store)
    assert elsewhere.records == []  # another grid does not adopt cells a run of "g" added


def test_grid_tables_label_rows_without_neutral_settings_and_test_pairs(registry, write_grid, tmp_path):
    """Through a real run: the records keep per-episode values, so the table has paired tests; labels
    leave out `vmap_tasks` (marked result-neutral in fomaml's spec) though it differs between the rows."""
    store = ResultStore(tmp_path / "results")
    body = ('[[block]]\nalgorithms = [{ name = "fomaml", inner_lr = 0.01, vmap_tasks = false }, '
            '{ name = "fomaml", inner_lr = 0.02 }, "pretrain"]\n'
            'suites = [{ name = "sinusoid", shots = 5 }]\n')
    path = write_grid(body, name="labels")
    run_grid(load_grid(str(path), registry), registry, store, in_process=True, progress=False)
    assert "vmap_tasks" in neutral_hparams(registry)["fomaml"]
    tables, warnings = grid_tables([str(path)], registry, store, alpha=0.01)
    assert warnings == []
    ((key, table),) = tables.items()
    assert key == ("labels", "sinusoid[shots=5]")
    assert sorted(table["algorithm"]) == ["fomaml[inner_lr=0.01]", "fomaml[inner_lr=0.02]", "pretrain"]
    assert table["paired_episodes"].iloc[1:].tolist() == [6, 6] and table.attrs["alpha"] == 0.01
    assert "tie at p ≥ 0.01" in table.attrs["notes"][0]
    assert any("vmap_tasks=False" in line for line in table.attrs["configurations"])
    with pytest.raises(UsageError, match="alpha must be a number strictly between 0 and 1"):
        grid_tables([str(path)], registry, store, alpha=5)
