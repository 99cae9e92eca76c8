"""`harness reproduce` on a real tiny cell: exact on this machine, tampered numbers found with their
difference, a tolerance on another kind of machine, configuration and code changes named field by field,
and bad input refused before anything runs. The store is never written."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness import episode_values
from harness.grid import load_grid
from harness.results import ResultStore, fingerprint
from harness.session import run_grid
from tests.conftest import run_main as harness

GRID = """name = "repro"
backends = ["cpu"]
[budget]
iterations = 8
val_interval = 4
val_episodes = 3
test_episodes = 5
timeout = 120
threads = 1
[[block]]
algorithms = ["maml"]
suites = [{ name = "sinusoid", shots = 5 }]
"""
CELL = "maml/sinusoid[shots=5]/cpu/seed=0"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stored(registry, tmp_path_factory):
    """A store with one record of a real cell run in its own process, as `harness run` makes it."""
    root = tmp_path_factory.mktemp("repro")
    (root / "g.toml").write_text(GRID)
    store = ResultStore(root / "results")
    outcome = run_grid(load_grid(str(root / "g.toml"), registry), registry, store, progress=False)
    (record,) = outcome.records
    assert record["status"] == "ok" and record["execution"]["mode"] == "subprocess"
    return root / "results", record


def tampered_store(folder: Path, record: dict) -> Path:
    ResultStore(folder).write(record)
    return folder


def test_a_real_cell_reproduces_exactly_here_and_the_store_is_not_written(stored, tmp_path, capsys):
    results, record = stored
    before = snapshot(results)
    code, out, err = harness(tmp_path, capsys, "reproduce", "maml/sin", "--results", str(results))
    assert code == 0, out + err
    assert out.rstrip().endswith("REPRODUCED") and "NOT REPRODUCED" not in out
    assert f"reproducing {CELL}" in out
    assert "re-running it in its own process; the new record is not written" in out
    assert "identical numbers required (same GPU or CPU model and kernels, torch version and threads)" in out
    assert f"{record['metric']['mean']!r} (record) vs {record['metric']['mean']!r} (now), difference 0" in out
    assert "per-step means: all 11 match" in out
    assert "per-episode values: all 55 match (11 steps x 5 episodes)" in out
    assert "configuration and code versions: as recorded" in out
    assert snapshot(results) == before


def test_a_tampered_metric_is_not_reproduced_and_the_difference_shown(stored, tmp_path, capsys):
    _, record = stored
    bad = copy.deepcopy(record)
    bad["metric"]["mean"] += 0.5
    tampered_store(tmp_path / "t", bad)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "t", "--in-process")
    assert code == 1 and out.rstrip().endswith("NOT REPRODUCED")
    line = next(line for line in out.splitlines() if line.startswith("X metric mean"))
    assert f"{bad['metric']['mean']!r} (record) vs {record['metric']['mean']!r} (now)" in line
    assert f"difference {0.5:.3g}" in line and "per-episode values: all 55 match" in out


def test_one_changed_episode_value_is_found(stored, tmp_path, capsys):
    _, record = stored
    bad = copy.deepcopy(record)
    values = episode_values.values(record)
    values[3, 2] *= 1.0 + 1e-12  # the smallest change still shows: same machine kind means identical
    bad["per_episode"] = episode_values.encode(values, seed=record["per_episode"]["seed"], source="sampled")
    tampered_store(tmp_path / "t", bad)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "t", "--in-process")
    assert code == 1 and "X per-episode values: 1 of 55 differ" in out


def test_another_kind_of_machine_gets_the_tolerance_and_the_differences_listed(stored, tmp_path, capsys):
    _, record = stored
    other = copy.deepcopy(record)
    other["environment"]["cpu"]["model"] = "Another CPU 9000"
    other["environment"]["torch"] = "1.0.0"
    other["metric"]["mean"] *= 1 + 1e-4  # within the default relative tolerance 1e-3
    tampered_store(tmp_path / "near", other)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "near", "--in-process")
    assert code == 0, out
    assert "relative tolerance 0.001 (another kind of machine: device, torch differ)" in out
    assert "cpu.model: 'Another CPU 9000' (record) -> " in out and "torch: '1.0.0' (record) -> " in out
    far = copy.deepcopy(other)
    far["metric"]["mean"] = record["metric"]["mean"] * (1 + 1e-2)
    tampered_store(tmp_path / "far", far)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "far", "--in-process")
    assert code == 1 and "relative 0.0099" in out
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "far", "--in-process",
                           "--tolerance", "0.02")
    assert code == 0 and "relative tolerance 0.02 (--tolerance)" in out


def test_a_changed_configuration_or_code_version_is_named(stored, tmp_path, capsys):
    _, record = stored
    old = copy.deepcopy(record)
    old["config"]["algorithm"]["hparams"]["inner_lr"] = 0.4  # as if the default had been 0.4 then
    old["code_version"]["algorithm"] = "0"
    old["fingerprint"] = fingerprint(old["config"], old["code_version"])
    tampered_store(tmp_path / "old", old)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "old", "--in-process")
    assert "the configuration or code differs from the record's (the result may legitimately differ)" in out
    assert "config.algorithm.hparams.inner_lr: 0.4 (record) -> 0.01 (now)" in out
    assert "code_version.algorithm: '0' (record) -> '1' (now)" in out
    assert code == 0  # the cell ran with today's defaults, which made the stored numbers


def test_the_newest_ok_record_is_reproduced_and_a_failed_cell_refused(stored, tmp_path, capsys):
    _, record = stored
    failed = {**copy.deepcopy(record), "status": "failed", "reason": "boom",
              "finished_at": "2999-01-01T00:00:00+00:00"}
    tampered_store(tmp_path / "mixed", record)
    tampered_store(tmp_path / "mixed", failed)
    code, out, _ = harness(tmp_path, capsys, "reproduce", CELL, "--results", "mixed", "--in-process")
    assert code == 0 and f"(finished {record['finished_at']})" in out
    tampered_store(tmp_path / "failed", failed)
    code, _, err = harness(tmp_path, capsys, "reproduce", CELL, "--results", "failed")
    assert code == 2 and "has status 'failed' (boom); only an ok record has a metric to reproduce" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--tolerance", "nan"], "--tolerance must be a relative tolerance from 0 (identical) to below 1, "
                             "got nan"),
    (["--tolerance", "-0.1"], "got -0.1"),
    (["--tolerance", "1"], "got 1.0"),
    (["--results", "nowhere"], "results directory nowhere does not exist"),
])
def test_bad_options_are_refused_before_anything_runs(stored, tmp_path, capsys, args, message):
    results, _ = stored
    code, out, err = harness(tmp_path, capsys, "reproduce", CELL, "--results", str(results), *args)
    assert code == 2 and message in err and "reproducing" not in out


def test_unknown_cells_and_plugins_are_refused(stored, tmp_path, capsys):
    results, record = stored
    code, _, err = harness(tmp_path, capsys, "reproduce", "protonet/glyphs", "--results", str(results))
    assert code == 2 and "no cell 'protonet/glyphs'" in err
    alien = copy.deepcopy(record)
    alien["cell"]["algorithm"] = "someone-elses-maml"
    path = tampered_store(tmp_path / "alien", alien)
    (file,) = path.rglob("*.json")
    code, _, err = harness(tmp_path, capsys, "reproduce", str(file), "--results", "alien")
    assert code == 2 and "cannot rebuild the cell of" in err
    assert "unknown algorithm 'someone-elses-maml'" in err
    assert "-p MODULE" in err
    json.loads(file.read_text())  # left as it was
