"""`harness merge` and `harness export` on stores made by real tiny cells: deduplication by record id,
planted conflicts and damaged files, dry runs, grids that travel, and tables read back with pandas."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from harness.grid import load_grid
from harness.merge import record_id
from harness.results import ResultStore, kind_differences
from harness.session import run_grid
from tests.conftest import run_main as harness

GRID = """name = "xchg"
backends = ["cpu"]
[budget]
iterations = 8
val_interval = 4
val_episodes = 3
test_episodes = 5
timeout = 120
threads = 1
[[block]]
algorithms = ["maml", "reptile"]
suites = [{ name = "sinusoid", shots = 5 }]
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def run_store(registry, folder: Path, only: list[str] | None = None) -> Path:
    """A store holding the records of real tiny cells of GRID (`only` these algorithms, as with
    `harness run --algorithm`), and the grid's text, as `harness run` keeps it."""
    grid_path = folder.parent / "xchg.toml"
    grid_path.write_text(GRID)
    store = ResultStore(folder)
    store.save_grid("xchg", grid_path.read_text())
    grid = load_grid(str(grid_path), registry, algorithms=only or [])
    outcome = run_grid(grid, registry, store, in_process=True, progress=False)
    assert not outcome.failed
    return folder


def build_stores(registry, root: Path) -> dict:
    """a: maml and reptile; b: maml alone again (same numbers, another record) plus a's reptile record copied
    (a duplicate); c: a's maml record with its metric changed (a conflict, same file name), a damaged
    file, and the grid under the same name with other text."""
    a = run_store(registry, root / "a")
    b = run_store(registry, root / "b", ["maml"])
    (a_maml,) = ResultStore(a).entries("maml/sinusoid[shots=5]/cpu/seed=0")
    (a_reptile,) = ResultStore(a).entries("reptile/sinusoid[shots=5]/cpu/seed=0")
    shutil.copytree(a_reptile[0].parent, b / a_reptile[0].parent.name, dirs_exist_ok=True)
    c = root / "c"
    tampered = dict(a_maml[1], metric={**a_maml[1]["metric"], "mean": a_maml[1]["metric"]["mean"] + 0.25})
    path = c / a_maml[0].parent.name / a_maml[0].name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(tampered, indent=1))
    (c / "damaged_cell").mkdir()
    (c / "damaged_cell" / "half-written.json").write_text('{"schema": 1, "cell_id": "x", ')
    ResultStore(c).save_grid("xchg", "# another machine's edit\n" + (a / ".grids" / "xchg.toml").read_text())
    return {"a": a, "b": b, "c": c, "a_maml": a_maml, "tampered": tampered}


@pytest.fixture(scope="module")
def stores(registry, tmp_path_factory):
    return build_stores(registry, tmp_path_factory.mktemp("stores"))


def test_record_id_is_the_hash_of_the_canonical_content(stores):
    path, record = stores["a_maml"]
    expected = hashlib.sha256(canonical(record).encode()).hexdigest()[:20]
    assert record_id(record) == expected
    assert record_id(json.loads(path.read_text())) == record_id(json.loads(json.dumps(record, indent=4)))
    assert record_id(stores["tampered"]) != expected


def test_merge_dedupes_reports_conflicts_and_damage_and_loses_nothing(stores, tmp_path, capsys):
    sources = {name: snapshot(stores[name]) for name in "abc"}
    code, out, err = harness(tmp_path, capsys, "merge", str(stores["a"]), str(stores["b"]), str(stores["c"]),
                             "--into", "merged")
    assert code == 1, err  # conflicts and damaged files ask for a look: exit 1, everything else copied
    # a: 2 records; b: 1 new + the copy of a's reptile; c: the tampered maml (same name as a's) + damage.
    assert "copied 4 record(s) into merged/, 1 duplicate(s), 1 conflict(s), 1 damaged (skipped)" in out
    assert "grids: 1 new, 1 identical, 1 conflicting" in out
    assert "half-written.json: skipped: not valid JSON" in err
    conflict = next(line for line in err.splitlines() if line.startswith("harness: conflict: maml/"))
    a_path = stores["a_maml"][0]
    means = stores["a_maml"][1]["metric"]["mean"], stores["tampered"]["metric"]["mean"]
    assert f"metric.mean {means[0]!r} vs {means[1]!r}" in conflict
    assert str(stores["a"] / a_path.parent.name / a_path.name) in conflict
    assert str(stores["c"] / a_path.parent.name / a_path.name) in conflict and "both kept" in conflict
    merged = ResultStore(tmp_path / "merged")
    kept = merged.entries()
    assert not merged.problems
    expected = {canonical(r) for name in "abc" for _, r in ResultStore(stores[name]).entries()}
    assert len(expected) == 4 and sorted(canonical(r) for _, r in kept) == sorted(expected)
    names = sorted(p.name for p, _ in kept if p.parent.name == a_path.parent.name)
    assert a_path.name in names and a_path.name.replace(".json", "-m1.json") in names  # both kept, both named
    assert {name: snapshot(stores[name]) for name in "abc"} == sources  # sources untouched

    before = snapshot(tmp_path / "merged")
    code, out, _ = harness(tmp_path, capsys, "merge", str(stores["a"]), str(stores["b"]), "--into", "merged")
    assert code == 0 and "copied 0 record(s) into merged/, 4 duplicate(s), 0 conflict(s)" in out
    assert snapshot(tmp_path / "merged") == before


def test_dry_run_reports_the_same_and_writes_nothing(stores, tmp_path, capsys):
    code, out, err = harness(tmp_path, capsys, "merge", str(stores["a"]), str(stores["c"]), "--into", "new",
                             "--dry-run")
    assert code == 1 and not (tmp_path / "new").exists()
    assert "would copy 3 record(s) into new/, 0 duplicate(s), 1 conflict(s), 1 damaged" in out
    assert out.count("  would copy ") == 3 and "nothing written" in out and "harness: conflict: maml/" in err
    harness(tmp_path, capsys, "merge", str(stores["b"]), "--into", "new")
    before = snapshot(tmp_path / "new")
    code, out, _ = harness(tmp_path, capsys, "merge", str(stores["a"]), "--into", "new", "--dry-run")
    assert code == 0 and "would copy 1 record(s) into new/, 1 duplicate(s), 0 conflict(s)" in out
    assert snapshot(tmp_path / "new") == before


def test_a_conflicting_grid_is_kept_aside_and_the_target_keeps_its_own(stores, tmp_path, capsys):
    harness(tmp_path, capsys, "merge", str(stores["a"]), "--into", "m")
    ours = (tmp_path / "m" / ".grids" / "xchg.toml").read_text()
    assert ours == (stores["a"] / ".grids" / "xchg.toml").read_text()
    code, _, err = harness(tmp_path, capsys, "merge", str(stores["c"]), "--into", "m")
    theirs = (stores["c"] / ".grids" / "xchg.toml").read_text()
    (aside,) = (tmp_path / "m" / ".grids" / "merge-conflicts").glob("xchg-*.toml")
    assert code == 1 and aside.read_text() == theirs
    assert (tmp_path / "m" / ".grids" / "xchg.toml").read_text() == ours
    assert f"grid 'xchg': {stores['c'] / '.grids' / 'xchg.toml'} differs from" in err
    assert str(aside.relative_to(tmp_path)) in err
    assert [p.name for p in ResultStore(tmp_path / "m").saved_grids()] == ["xchg.toml"]


def test_different_numbers_on_another_kind_of_machine_are_no_conflict(stores, tmp_path, capsys):
    other = dict(stores["tampered"])
    env = other["environment"]
    other["environment"] = {**env, "cpu": {**env["cpu"], "model": "Other CPU"}}
    assert kind_differences(other["environment"], stores["a_maml"][1]["environment"]) == ["device"]
    ResultStore(tmp_path / "elsewhere").write(other)
    code, out, err = harness(tmp_path, capsys, "merge", str(stores["a"]), "elsewhere", "--into", "m")
    assert code == 0 and "copied 3 record(s)" in out and "0 conflict(s)" in out and "conflict:" not in err


def test_the_cpu_kernels_are_part_of_the_machine_kind(stores, tmp_path, capsys):
    # One CPU model name, other kernels (a VM on another core type): different numbers are no conflict.
    # A record from before the kernels were recorded is compared as if they were the same.
    env = stores["tampered"]["environment"]
    assert env["cpu"]["isa"] and env["cpu"]["blas"]  # recorded by this harness
    zen = {**env["cpu"], "blas": "openblas 0.3 Zen"}
    elsewhere = {**stores["tampered"], "environment": {**env, "cpu": zen}}
    older = {**stores["tampered"], "environment": {**env, "cpu": {k: v for k, v in env["cpu"].items()
                                                                   if k not in ("isa", "blas")}}}
    assert kind_differences(elsewhere["environment"], stores["a_maml"][1]["environment"]) == ["blas"]
    assert kind_differences(older["environment"], stores["a_maml"][1]["environment"]) == []
    ResultStore(tmp_path / "elsewhere").write(elsewhere)
    code, out, err = harness(tmp_path, capsys, "merge", str(stores["a"]), "elsewhere", "--into", "m")
    assert code == 0 and "0 conflict(s)" in out and "conflict:" not in err
    ResultStore(tmp_path / "older").write(older)
    code, out, err = harness(tmp_path, capsys, "merge", "older", "--into", "m")
    assert code == 1 and "1 conflict(s)" in out and f"({env['cpu']['isa']}, {env['cpu']['blas']})" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["missing"], "merge source missing does not exist"),
    (["m"], "merge source m is the --into folder itself"),
    (["file.txt"], "merge source file.txt is not a folder"),
])
def test_merge_refuses_bad_sources_before_copying(tmp_path, capsys, args, message):
    (tmp_path / "m").mkdir()
    (tmp_path / "file.txt").write_text("x")
    code, _, err = harness(tmp_path, capsys, "merge", *args, "--into", "m")
    assert code == 2 and message in err and not any((tmp_path / "m").iterdir())
