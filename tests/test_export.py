"""`harness export`: the whole store as CSV or parquet, per record and per episode, read back and checked
against the records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import episode_values
from harness.export import _tidy
from harness.merge import record_id
from harness.results import ResultStore
from tests.conftest import run_main as harness
from tests.test_merge import build_stores


@pytest.fixture(scope="module")
def stores(registry, tmp_path_factory):
    return build_stores(registry, tmp_path_factory.mktemp("stores"))


def _records(store: Path) -> dict[str, dict]:
    return {record_id(r): r for _, r in ResultStore(store).entries()}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_one_row_per_record_matches_the_records(stores, tmp_path, capsys, fmt):
    code, out, err = harness(tmp_path, capsys, "export", "--results", str(stores["b"]), "--format", fmt)
    assert code == 0, err
    path = tmp_path / f"results.{fmt}"
    table = pd.read_csv(path, float_precision="round_trip") if fmt == "csv" else pd.read_parquet(path)
    records = _records(stores["b"])
    assert f"{len(records)} rows (records)" in out and len(table) == len(records) == 2
    for _, row in table.iterrows():
        record = records[row["record_id"]]
        config, metric, env = record["config"], record["metric"], record["environment"]
        assert row["cell_id"] == record["cell_id"] and row["algorithm"] == record["cell"]["algorithm"]
        assert row["status"] == "ok" and row["seed"] == 0 and row["fingerprint"] == record["fingerprint"]
        for name, value in config["algorithm"]["hparams"].items():
            assert row[f"hparam.{name}"] == value
        assert row["suite_config.shots"] == 5 and row["budget.iterations"] == 8
        assert row["metric.mean"] == metric["mean"] and row["metric.ci95"] == metric["ci95"]
        assert row["metric.n"] == 5 and row["metric.std"] == metric["std"]
        steps = metric["per_step"]
        assert [row[f"metric.mean@{s['step']}"] for s in steps] == [s["mean"] for s in steps]
        assert row["timing.meta_train_s"] == record["timings"]["meta_train_s"]
        assert row["memory.peak_bytes"] == record["memory"]["peak_bytes"]
        assert row["params"] == record["params"]
        assert row["env.cpu_model"] == env["cpu"]["model"] and row["env.torch"] == env["torch"]
        assert row["execution.mode"] == "in-process" and bool(row["execution.exclusive"]) is True
        assert bool(row["current"]) is True and row["file"].endswith(".json")
    if fmt == "parquet":  # one type per column, integers and booleans kept as such
        assert str(table["seed"].dtype) == "Int64" and str(table["execution.exclusive"].dtype) == "boolean"


def test_per_episode_export_has_steps_times_episodes_rows(stores, tmp_path, capsys):
    code, out, _ = harness(tmp_path, capsys, "export", "--results", str(stores["a"]), "--per-episode",
                           "--format", "parquet")
    table = pd.read_parquet(tmp_path / "episodes.parquet")
    records = _records(stores["a"])
    arrays = {rid: episode_values.values(r) for rid, r in records.items()}
    assert code == 0 and len(table) == sum(a.size for a in arrays.values()) == 2 * 11 * 5
    for rid, rows in table.groupby("record_id"):
        record, array = records[rid], arrays[rid]
        rows = rows.sort_values(["step", "episode"])
        assert np.array_equal(rows["value"].to_numpy().reshape(array.shape), array)
        assert set(rows["split"]) == {"test"} and set(rows["episode_seed"]) == {record["per_episode"]["seed"]}
        assert sorted(set(rows["episode"])) == list(range(5)) and sorted(set(rows["step"])) == list(range(11))
        means = rows.groupby("step")["value"].mean().to_numpy()
        assert np.allclose(means, [s["mean"] for s in record["metric"]["per_step"]], rtol=1e-6)


def test_export_refuses_to_overwrite_and_bad_input(stores, tmp_path, capsys, monkeypatch):
    (tmp_path / "results.csv").write_text("mine")
    code, _, err = harness(tmp_path, capsys, "export", "--results", str(stores["a"]))
    assert code == 2 and "results.csv already exists; export never overwrites" in err
    assert (tmp_path / "results.csv").read_text() == "mine"
    code, _, err = harness(tmp_path, capsys, "export", "--results", "nowhere", "--out", "x.csv")
    assert code == 2 and "results directory nowhere does not exist" in err
    assert not (tmp_path / "x.csv").exists()
    code, _, err = harness(tmp_path, capsys, "export", "--results", str(stores["a"]), "--out",
                           "results.csv/x.csv")
    assert code == 2 and "results.csv is not a folder" in err
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    code, _, err = harness(tmp_path, capsys, "export", "--results", str(stores["a"]), "--format", "parquet")
    assert code == 2 and "pip install metaharness[export]" in err
    assert not (tmp_path / "results.parquet").exists()


def test_export_skips_damaged_records_with_a_warning(stores, tmp_path, capsys):
    code, out, err = harness(tmp_path, capsys, "export", "--results", str(stores["c"]), "--out", "c.csv")
    assert code == 0 and "1 rows (records)" in out and "half-written.json: skipped" in err


def test_a_column_of_mixed_kinds_becomes_json_text():
    rows = [{"a": 1, "b": [1, 2], "c": True, "d": 0.5}, {"a": None, "b": "x", "c": None, "d": 1}]
    frame = _tidy(pd.DataFrame(rows, dtype=object))
    assert str(frame["a"].dtype) == "Int64" and list(frame["b"]) == ["[1, 2]", "x"]
    assert str(frame["c"].dtype) == "boolean" and list(frame["d"]) == [0.5, 1.0]
