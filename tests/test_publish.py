"""harness.publish: a grid's tables come from its cells' records, whichever run or grid wrote them."""

from __future__ import annotations

import os

from harness import cli
from harness.grid import load_grid
from harness.publish import grid_records
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
    committed = {p.relative_to(REPO / "leaderboards"): p.read_text() for p in (REPO / "leaderboards").rglob("*.*")}
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
