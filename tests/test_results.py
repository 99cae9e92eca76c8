"""Tests for harness.results: records, fingerprints, environment capture, the append-only store, show text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError, UsageError
from harness.results import (
    SCHEMA_VERSION,
    STATUSES,
    ResultStore,
    capture_environment,
    cpu_kernels,
    fingerprint,
    slugify,
)
from harness.specs import Budget, Cell


def make_record(
    algorithm: str = "maml",
    hparams: dict[str, Any] | None = None,
    suite: str = "sinusoid",
    suite_config: dict[str, Any] | None = None,
    seed: int = 0,
    status: str = "ok",
    mean: float = 0.35,
    ci95: float = 0.02,
    metric: str = "mse",
    label: str | None = "",
    higher: bool = False,
    grid: str = "smoke",
    backend: str = "cpu",
    finished_at: str = "2026-11-23T07:00:00+00:00",
    steps: int = 10,
    reason: str = "",
    n: int = 600,
    exclusive: bool = True,
) -> dict[str, Any]:
    """A realistic record as the runner writes it (schema 1). `label` "" is the bundled suites' label of the
    metric (sinusoid's "MSE"); None leaves it out, as records written before suites declared one."""
    if label == "":
        label = "MSE" if metric == "mse" else metric.replace("_", " ")
    hparams = {"inner_lr": 0.01} if hparams is None else hparams
    suite_config = {"shots": 10} if suite_config is None else suite_config
    cell = Cell(
        algorithm,
        tuple(sorted(hparams.items())),
        suite,
        tuple(sorted(suite_config.items())),
        backend,
        seed,
        Budget(iterations=1000),
        grid,
    )
    config = {
        "algorithm": {"name": algorithm, "hparams": {"inner_lr": 0.01, "steps": 1, **hparams}},
        "suite": {"name": suite, "config": {"shots": 10, "query": 10, **suite_config}},
        "backend": backend,
        "budget": cell.to_dict()["budget"],
    }
    code = {"harness": "0.1.0", "algorithm": "1", "suite": "1", "backend": "1", "plugins": {}}
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "cell_id": cell.id,
        "cell": cell.to_dict(),
        "config": config,
        "fingerprint": fingerprint(config, code),
        "code_version": code,
        "seeds": {"base": seed, "cell": 123456 + seed, "val": 789, "test": 42},
        "status": status,
        "reason": reason,
        "environment": {
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
            "cuda": None,
            "gpu": None,
            "cpu": {"model": "AMD EPYC", "logical_cpus": 2, "torch_threads": 2},
            "git": {"sha": "8e69fa56127b04365b913e098a707ad900454882", "dirty": False},
        },
        "execution": {"mode": "subprocess", "exclusive": exclusive},
        "started_at": "2026-11-23T06:59:00+00:00",
        "finished_at": finished_at,
    }
    if status != "ok":
        return record
    record.update(
        {
            "metric": {
                "name": metric,
                **({} if label is None else {"label": label}),
                "higher_is_better": higher,
                "mean": mean,
                "ci95": ci95,
                "std": 0.3,
                "n": n,
                "final_step": steps,
                "per_step": [
                    {"step": s, "mean": mean + 0.1 * (steps - s), "ci95": ci95} for s in range(steps + 1)
                ],
            },
            "timings": {
                "meta_train_s": 12.3,
                "warmup_s": 0.4,
                "warmup_iterations": 5,
                "iterations": 1000,
                "stopped_by": "iterations",
                "time_per_iteration_s": 0.012,
                "adapt_latency_s": 0.0009,
                "test_s": 1.2,
                "cell_s": 15.0,
            },
            "memory": {"peak_bytes": 256 * 2**20, "kind": "process peak RSS"},
            "params": 1761,
            "curve": [
                {"iteration": i, "train_loss": 2.0 / i, "val_metric": 1.5 / i, "elapsed_s": i * 0.01}
                for i in range(100, 1001, 100)
            ],
            "best": {"iteration": 1000, "val_metric": 0.0015},
        }
    )
    return record


def record_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    assert not store.root.exists()  # created on first write, not on construction
    path = store.write(make_record())
    assert record_files(store.root) == [path]
    assert json.loads(path.read_text())["cell_id"] == make_record()["cell_id"]
    assert path.parent == store.cell_dir(make_record()["cell_id"])


def test_crash_mid_write_leaves_no_half_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    first = store.write(make_record())
    before = first.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "link", crash)  # records are linked into place, never renamed over a file
    with pytest.raises(OSError, match="disk on fire"):
        store.write(make_record(mean=0.1, finished_at="2026-11-23T08:00:00+00:00"))
    monkeypatch.undo()
    assert record_files(tmp_path) == [first]
    assert first.read_bytes() == before
    assert store.latest(make_record()["cell_id"])["metric"]["mean"] == 0.35
    assert store.problems == []


def test_append_only_latest_wins(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    old = store.write(make_record(mean=0.5, finished_at="2026-11-23T07:00:00+00:00"))
    new = store.write(make_record(mean=0.3, finished_at="2026-11-23T09:00:00+00:00"))
    assert old != new and old.exists() and new.exists()
    cell_id = make_record()["cell_id"]
    assert [r["metric"]["mean"] for r in store.records_for(cell_id)] == [0.5, 0.3]
    assert store.latest(cell_id)["metric"]["mean"] == 0.3
    assert store.latest("nope/none/cpu/seed=0") is None


def test_iter_records_sorted_by_time_not_write_order(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write(make_record(seed=1, finished_at="2026-11-23T09:00:00+00:00"))
    store.write(make_record(seed=0, finished_at="2026-11-23T08:00:00+00:00"))
    assert [r["cell"]["seed"] for r in store.iter_records()] == [0, 1]


def test_write_validates_before_touching_disk(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    for bad, match in [
        ({**make_record(), "status": "exploded"}, "is not one of ok, failed"),
        ({**make_record(), "schema": 99}, "schema"),
        ({k: v for k, v in make_record().items() if k != "cell_id"}, "cell_id"),
        ({**make_record(), "params": object()}, "not JSON-serialisable"),
    ]:
        with pytest.raises(HarnessError, match=match):
            store.write(bad)
    assert not store.root.exists()
    assert set(STATUSES) == {"ok", "failed", "timeout", "diverged", "skipped", "unavailable"}


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    record = make_record()
    record["metric"]["ci95"] = float("nan")
    path = ResultStore(tmp_path).write(record)
    assert json.loads(path.read_text())["metric"]["ci95"] is None


def test_find_completed_honours_fingerprint_and_status(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    ok = make_record(finished_at="2026-11-23T07:00:00+00:00")
    store.write(ok)
    store.write(make_record(status="failed", reason="boom", finished_at="2026-11-23T08:00:00+00:00"))
    found = store.find_completed(ok["cell_id"], ok["fingerprint"])
    assert found is not None and found["status"] == "ok"
    assert store.find_completed(ok["cell_id"], "0" * 64) is None
    other = make_record(seed=3)
    store.write(make_record(seed=3, status="timeout", reason="exceeded 1800 s"))
    assert store.find_completed(other["cell_id"], other["fingerprint"]) is None


def test_corrupt_file_is_skipped_reported_and_kept(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    good = store.write(make_record())
    broken = good.parent / "20261123T070000.000000Z-1-abcdef.json"
    broken.write_text('{"schema": 1, "cell_id": "maml')
    records = list(store.iter_records())
    assert len(records) == 1
    assert len(store.problems) == 1 and str(broken) in store.problems[0]
    assert broken.exists()
    assert store.latest(make_record()["cell_id"]) is not None


def test_find_by_id_prefix_path_and_errors(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(UsageError, match="no result records"):
        store.find("maml")
    path = store.write(make_record(seed=0))
    store.write(make_record(seed=1))
    store.write(make_record(algorithm="reptile", hparams={}))
    exact = make_record(seed=1)["cell_id"]
    assert store.find(exact)["cell"]["seed"] == 1
    assert store.find("reptile")["cell"]["algorithm"] == "reptile"
    assert store.find(str(path))["cell"]["seed"] == 0
    with pytest.raises(UsageError, match="matches 2 cells") as err:
        store.find("maml")
    assert "seed=0" in str(err.value) and "seed=1" in str(err.value)
    with pytest.raises(UsageError, match="close matches") as err:
        store.find("maml[inner_lr=0.01]/sinusoid[shots=10]/cpu/seed=7")
    assert "seed=0" in str(err.value)


def test_fingerprint_stable_and_sensitive() -> None:
    config = {"algorithm": {"name": "maml", "hparams": {"inner_lr": 0.01, "steps": 1}}, "backend": "cpu"}
    reordered = {"backend": "cpu", "algorithm": {"hparams": {"steps": 1, "inner_lr": 0.01}, "name": "maml"}}
    code = {"harness": "0.1.0", "algorithm": "1"}
    fp = fingerprint(config, code)
    assert len(fp) == 64 and fp == fingerprint(reordered, dict(reversed(list(code.items()))))
    changed = {**config, "algorithm": {"name": "maml", "hparams": {"inner_lr": 0.02, "steps": 1}}}
    assert fingerprint(changed, code) != fp
    assert fingerprint(config, {**code, "algorithm": "2"}) != fp


def test_slug_is_safe_unique_and_bounded() -> None:
    a = slugify("maml[inner_lr=0.01]/sinusoid[shots=10]/cpu/seed=0")
    b = slugify("maml[inner_lr=0.01]/sinusoid[shots=10]/cpu/seed=0 ")
    assert a != b and "/" not in a and a.startswith("maml_inner_lr=0.01")
    assert len(slugify("x" * 500)) < 100


def test_capture_environment_keys_and_json() -> None:
    env = capture_environment({"device_name": "NVIDIA H100 80GB HBM3", "driver": "550"})
    for key in (
        "python",
        "platform",
        "torch",
        "cuda",
        "cudnn",
        "harness",
        "packages",
        "plugins",
        "cpu",
        "gpu",
        "git",
        "date",
    ):
        assert key in env
    assert "hostname" not in json.dumps(env).lower()
    assert env["gpu"] == "NVIDIA H100 80GB HBM3"
    assert env["cpu"]["logical_cpus"] >= 1 and env["cpu"]["torch_threads"] >= 1
    assert set(env["packages"]) >= {"numpy", "pandas", "pluggy"}
    assert env["git"] is None or len(env["git"]["sha"]) == 40
    json.loads(json.dumps(env, allow_nan=False))
    assert capture_environment()["gpu"] is None


def test_capture_environment_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert capture_environment()["git"] is None


def test_the_recorded_cpu_kernels_do_not_depend_on_what_else_is_loaded():
    """scs (qpth's solver, MetaOptNet's SVM head) loads an OpenBLAS of its own: a process that imported it
    must describe the same machine as one that did not, or reproduce and merge would see two kinds."""
    before = cpu_kernels()
    assert before["isa"] and before["blas"] and "openblas" in before["blas"]
    pytest.importorskip("scs")
    assert cpu_kernels() == before
