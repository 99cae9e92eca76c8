"""The runner: seeding, statuses for failures, hard timeouts, identical reruns, resume, shared test episodes."""

from __future__ import annotations

import math
import os
import re

import pytest

from harness.cells import resolve_cell, run_one, stable_seed
from harness.grid import load_grid
from harness.results import ResultStore
from harness.session import run_grid

TWO_ALGOS = """
[[block]]
algorithms = ["maml", "pretrain"]
suites = [{ name = "sinusoid", shots = 5 }]
"""


def _metrics(records):
    return {r["cell_id"]: (r["metric"]["mean"], [s["mean"] for s in r["metric"]["per_step"]],
                           [c["val_metric"] for c in r["curve"]], r["params"]) for r in records}


def test_record_has_every_measurement(registry, write_grid, tmp_path):
    grid = load_grid(str(write_grid(TWO_ALGOS)), registry)
    outcome = run_grid(grid, registry, ResultStore(tmp_path / "results"), in_process=True, progress=False)
    assert len(outcome.records) == 2 and not outcome.failed
    record = next(r for r in outcome.records if r["cell"]["algorithm"] == "maml")
    assert record["status"] == "ok" and record["reason"] == ""
    metric = record["metric"]
    assert metric["name"] == "mse" and metric["higher_is_better"] is False and metric["n"] == 6
    assert [s["step"] for s in metric["per_step"]] == list(range(11))  # MAML tests with 10 steps
    assert metric["mean"] == metric["per_step"][-1]["mean"] and metric["ci95"] > 0
    assert metric["episodes"] == "sampled"
    timings = record["timings"]
    assert timings["iterations"] == 12 and timings["warmup_iterations"] == 1 and timings["stopped_by"] == "iterations"
    assert 0 < timings["time_per_iteration_s"] < timings["meta_train_s"]
    assert timings["adapt_latency_s"] > 0 and timings["warmup_s"] > 0
    assert record["memory"]["peak_bytes"] > 10 * 2**20 and record["memory"]["kind"]
    assert record["params"] == 1 * 40 + 40 + 40 * 40 + 40 + 40 + 1
    assert [c["iteration"] for c in record["curve"]] == [6, 12]
    assert record["best"]["iteration"] in (6, 12)
    assert record["config"]["algorithm"]["hparams"]["inner_lr"] == 0.01
    assert record["environment"]["torch"] and record["execution"]["mode"] == "in-process"


def test_every_algorithm_and_seed_sees_the_same_test_episodes(registry, write_grid):
    grid = load_grid(str(write_grid("seeds = [0, 1]\n" + TWO_ALGOS)), registry)
    seeds = [resolve_cell(c, registry)["seeds"] for c in grid.cells]
    assert len({s["test"] for s in seeds}) == 1 and len({s["val"] for s in seeds}) == 1
    assert len({s["cell"] for s in seeds}) == len(seeds)


def test_same_grid_same_seed_gives_identical_numbers(registry, write_grid, tmp_path):
    grid = load_grid(str(write_grid(TWO_ALGOS)), registry)
    first = run_grid(grid, registry, ResultStore(tmp_path / "a"), progress=False)
    second = run_grid(grid, registry, ResultStore(tmp_path / "b"), progress=False)
    in_process = run_grid(grid, registry, ResultStore(tmp_path / "c"), in_process=True, progress=False)
    assert first.records[0]["execution"]["mode"] == "subprocess"
    assert _metrics(first.records) == _metrics(second.records) == _metrics(in_process.records)


def test_different_seed_gives_different_numbers(registry, write_grid, tmp_path):
    grid = load_grid(str(write_grid("seeds = [0, 1]\n" + TWO_ALGOS)), registry, algorithms=["maml"])
    records = run_grid(grid, registry, ResultStore(tmp_path), in_process=True, progress=False).records
    assert records[0]["metric"]["mean"] != records[1]["metric"]["mean"]


def test_failures_become_records_and_the_grid_goes_on(faulty_registry, write_grid, tmp_path):
    body = """
[[block]]
algorithms = ["raises", "nan", { name = "sleeps", sleep_s = 120.0 }, "healthy"]
suites = [{ name = "sinusoid", shots = 5 }]
budget = { iterations = 12, val_interval = 6, val_episodes = 4, test_episodes = 6, timeout = 8 }
"""
    grid = load_grid(str(write_grid(body)), faulty_registry)
    store = ResultStore(tmp_path)
    outcome = run_grid(grid, faulty_registry, store, progress=False)
    by_algo = {r["cell"]["algorithm"]: r for r in outcome.records}
    assert by_algo["raises"]["status"] == "failed"
    assert "RuntimeError: injected failure" in by_algo["raises"]["reason"]
    assert "injected failure" in by_algo["raises"]["traceback"]
    # The traceback can be published: its frames name modules, not where this machine keeps them.
    frames = re.findall(r'File "([^"]+)"', by_algo["raises"]["traceback"])
    assert 'harness/runner.py' in frames and not any(os.path.isabs(f) for f in frames), frames
    assert by_algo["nan"]["status"] == "diverged" and "iteration 3" in by_algo["nan"]["reason"]
    assert by_algo["sleeps"]["status"] == "timeout" and "8 s" in by_algo["sleeps"]["reason"]
    assert by_algo["healthy"]["status"] == "ok" and math.isfinite(by_algo["healthy"]["metric"]["mean"])
    assert {r["status"] for r in outcome.failed} == {"failed", "diverged", "timeout"}
    assert sorted(r["cell_id"] for r in store.iter_records()) == sorted(by_algo[a]["cell_id"] for a in by_algo)


def test_rerun_skips_completed_cells_and_force_appends(registry, write_grid, tmp_path):
    grid = load_grid(str(write_grid(TWO_ALGOS)), registry)
    store = ResultStore(tmp_path)
    first = run_grid(grid, registry, store, in_process=True, progress=False)
    again = run_grid(grid, registry, store, in_process=True, progress=False)
    assert (again.ran, again.reused) == (0, 2)
    assert _metrics(again.records) == _metrics(first.records)
    forced = run_grid(grid, registry, store, in_process=True, force=True, progress=False)
    assert forced.ran == 2
    cell_id = grid.cells[0].id
    assert len(store.records_for(cell_id)) == 2  # the old record is kept


def test_changed_config_is_not_reused(registry, write_grid, tmp_path):
    store = ResultStore(tmp_path)
    run_grid(load_grid(str(write_grid(TWO_ALGOS)), registry), registry, store, in_process=True, progress=False)
    longer = write_grid(TWO_ALGOS + "[budget]\niterations = 14\nval_interval = 7\nval_episodes = 4\n"
                        "test_episodes = 6\n", name="longer")
    again = run_grid(load_grid(str(longer), registry), registry, store, in_process=True, progress=False)
    assert again.ran == 2


def test_time_limit_stops_meta_training_early(registry, write_grid, tmp_path):
    body = TWO_ALGOS + "[budget]\niterations = 100000\ntime_limit = 1.0\nval_interval = 1000\nval_episodes = 2\ntest_episodes = 2\n"
    grid = load_grid(str(write_grid(body)), registry, algorithms=["pretrain"])
    (record,) = run_grid(grid, registry, ResultStore(tmp_path), in_process=True, progress=False).records
    assert record["status"] == "ok"
    assert record["timings"]["stopped_by"] == "time_limit"
    assert 1 < record["timings"]["iterations"] < 100000
    assert record["curve"][-1]["iteration"] == record["timings"]["iterations"]


def test_patience_stops_meta_training_once_validation_stops_improving(registry, write_grid, tmp_path):
    # Meta-SGD at a meta learning rate of 1e-12 never changes (its steps are below float32's resolution):
    # the first validation is the best, every later one only equals it, so training stops after `patience`
    # more validations.
    body = ('[[block]]\nalgorithms = [{ name = "metasgd", meta_lr = 1e-12 }, "maml"]\n'
            'suites = [{ name = "sinusoid", shots = 5 }]\n'
            "[budget]\niterations = 400\nval_interval = 10\npatience = 3\nval_episodes = 2\ntest_episodes = 2\n")
    grid = load_grid(str(write_grid(body)), registry)
    records = {r["cell"]["algorithm"]: r for r in
               run_grid(grid, registry, ResultStore(tmp_path), in_process=True, progress=False).records}
    frozen = records["metasgd"]
    assert frozen["status"] == "ok" and frozen["timings"]["stopped_by"] == "patience"
    iterations = [c["iteration"] for c in frozen["curve"]]
    assert frozen["best"]["iteration"] == iterations[-4] and iterations[-1] == frozen["timings"]["iterations"] < 400
    assert frozen["config"]["budget"]["patience"] == 3
    assert len({c["val_metric"] for c in frozen["curve"]}) == 1  # frozen: every validation the same
    # Patience stops only on validations that fail to improve: every stop is `patience` after the best.
    learning = records["maml"]
    curve = [c["iteration"] for c in learning["curve"]]
    if learning["timings"]["stopped_by"] == "patience":
        assert curve.index(learning["best"]["iteration"]) == len(curve) - 4
    else:
        assert learning["timings"]["iterations"] == 400


def test_config_dict_leaves_out_added_later_fields_at_their_default():
    from dataclasses import dataclass, field

    from harness.specs import ADDED_LATER, config_dict

    @dataclass(frozen=True)
    class Options:
        lr: float = 0.1
        scale: float = field(default=1.0, metadata=ADDED_LATER)
        sizes: tuple = field(default_factory=lambda: (1, 2), metadata=ADDED_LATER)

    assert config_dict(Options()) == {"lr": 0.1}
    assert config_dict(Options(scale=2.0, sizes=(3,))) == {"lr": 0.1, "scale": 2.0, "sizes": [3]}


def test_unset_later_budget_fields_keep_old_fingerprints(registry, write_grid):
    grid = load_grid(str(write_grid(TWO_ALGOS)), registry)
    config = resolve_cell(grid.cells[0], registry)["config"]["budget"]
    assert "patience" not in config and "memory_limit" not in config
    patient = load_grid(str(write_grid(TWO_ALGOS + "[budget]\npatience = 2\n", name="patient")), registry)
    assert resolve_cell(patient.cells[0], registry)["fingerprint"] != resolve_cell(grid.cells[0], registry)["fingerprint"]


def test_bad_hyper_parameter_fails_before_any_cell_runs(registry, tmp_path):
    from harness.errors import UsageError
    from harness.specs import Budget, Cell

    cell = Cell("maml", (("inner_lrr", 0.1),), "sinusoid", (), "cpu", 0, Budget(iterations=2))
    with pytest.raises(UsageError, match="inner_lrr"):
        run_one(cell, registry)


def test_stable_seed_is_a_pure_function():
    assert stable_seed(0, "a") == stable_seed(0, "a") != stable_seed(1, "a")
    assert 0 <= stable_seed("x") < 2**31


FIXED_TEST_SUITE = '''
"""A sinusoid suite whose test split is a fixed set of seven episodes, as a published benchmark's is."""
import torch
from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

from harness import TaskSuiteSpec, hookimpl


class FixedTestSinusoid(SinusoidSuite):
    def fixed_episodes(self, split):
        if split != "test":
            return None
        return SinusoidSuite.sample(self, 7, torch.Generator().manual_seed(1234), "test")

    def sample(self, n_tasks, generator, split):
        if split == "test":
            raise AssertionError("the runner sampled a split the suite declares fixed")
        return super().sample(n_tasks, generator, split)


@hookimpl
def harness_register_task_suites():
    return [TaskSuiteSpec(name="fixed-sinusoid", factory=FixedTestSinusoid, config=SinusoidConfig,
                          task_kind="regression", description="sinusoid with seven fixed test episodes")]
'''


def test_a_suites_fixed_test_episodes_replace_sampled_ones(tmp_path):
    from harness.registry import build_plugin_manager
    from harness.specs import Budget, Cell

    plugin = tmp_path / "fixed_suite.py"
    plugin.write_text(FIXED_TEST_SUITE)
    registry = build_plugin_manager([str(plugin)], entry_points=False)
    records = []
    for test_episodes in (50, 2):  # the budget's count is ignored: all seven fixed episodes, every time
        budget = Budget(iterations=4, val_interval=2, val_episodes=3, test_episodes=test_episodes, threads=1)
        cell = Cell("pretrain", (), "fixed-sinusoid", (("shots", 5),), "cpu", 0, budget)
        records.append(run_one(cell, registry, in_process=True))
    for record in records:
        assert record["status"] == "ok", record.get("traceback", record["reason"])
        assert record["metric"]["n"] == 7 and record["metric"]["episodes"] == "fixed"
    assert _metrics(records[:1]).popitem()[1] == _metrics(records[1:]).popitem()[1]


def test_large_episode_sets_are_drawn_in_chunks_the_same_every_time(registry, monkeypatch):
    import torch

    from harness import runner
    from metaharness_plugins.suites.sinusoid import SinusoidConfig, SinusoidSuite

    suite = SinusoidSuite(SinusoidConfig(shots=5))
    whole = runner.Episodes(suite, "test", 10, seed=3, device=torch.device("cpu"))
    assert whole.chunk == 10 and whole.held is not None and len(list(whole)) == 1
    per_episode = sum(t[:1].numel() * t.element_size() for t in
                      (whole.held.support_x, whole.held.support_y, whole.held.query_x, whole.held.query_y))
    monkeypatch.setattr(runner, "EPISODE_CHUNK_BYTES", 4 * per_episode)
    chunked = runner.Episodes(suite, "test", 10, seed=3, device=torch.device("cpu"))
    first, again = list(chunked), list(chunked)
    assert chunked.held is None and len(chunked) == 10
    assert [b.num_tasks for b in first] == [4, 4, 2]  # never more than the byte budget at once
    for a, b in zip(first, again):  # drawn afresh each time, identical each time
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    # The chunks continue one generator stream: distinct episodes, and the first chunk is exactly the
    # first four episodes of the same stream drawn as one batch of four.
    head = suite.sample(4, torch.Generator().manual_seed(3), "test")
    assert torch.equal(first[0].support_x, head.support_x)
    assert not torch.equal(first[0].support_x[:2], first[1].support_x[:2])


def test_error_messages_and_tracebacks_are_spelt_portably(tmp_path, monkeypatch):
    from harness.storage import portable_text, portable_traceback

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    message = f"FileNotFoundError: '{tmp_path}/data/omniglot/a.zip' (not {tmp_path}/database)"
    assert portable_text(message) == f"FileNotFoundError: '$HARNESS_DATA/omniglot/a.zip' (not {tmp_path}/database)"
    text = (f'Traceback (most recent call last):\n  File "{os.path.realpath(re.__file__)}", line 1, in f\n'
            f'  File "{tmp_path}/elsewhere/mod.py", line 2, in g\nOSError: File "{tmp_path}/data/x" is bad\n')
    assert portable_traceback(text) == ('Traceback (most recent call last):\n  File "re/__init__.py", line 1, in f\n'
                                        '  File ".../mod.py", line 2, in g\nOSError: File "$HARNESS_DATA/x" is bad\n')
    assert portable_traceback(None) is None  # never raises: what it cannot read comes back as it was


def test_record_carries_the_suites_description_with_portable_paths(registry, tmp_path, monkeypatch):
    from harness.storage import portable_paths

    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    described = {"archives": [{"path": str(tmp_path / "data/omniglot/a.zip"), "md5": "x"}],
                 "cache_file": str(tmp_path / "cache/omniglot/c.pt"), "elsewhere": "/opt/z", "n": 3}
    assert portable_paths(described) == {"archives": [{"path": "$HARNESS_DATA/omniglot/a.zip", "md5": "x"}],
                                         "cache_file": "$HARNESS_CACHE/omniglot/c.pt", "elsewhere": "/opt/z", "n": 3}
    from harness.specs import Budget, Cell

    budget = Budget(iterations=2, val_interval=2, val_episodes=2, test_episodes=2, threads=1)
    record = run_one(Cell("protonet", (), "glyphs", (("query", 2),), "cpu", 0, budget), registry, in_process=True)
    assert record["status"] == "ok", record.get("traceback", record["reason"])
    assert record["suite_info"]["model"]["batch_norm"].startswith("batch statistics")


def test_cells_differing_only_in_episode_neutral_options_share_episodes(registry):
    from harness.specs import Budget, Cell

    budget = Budget()
    seeds = {model: resolve_cell(Cell("maml", (), "omniglot", (("model", model),), "cpu", 0, budget),
                                 registry)["seeds"] for model in ("conv4", "conv4-nopool", "mlp")}
    assert len({(s["val"], s["test"]) for s in seeds.values()}) == 1
    ways = resolve_cell(Cell("maml", (), "omniglot", (("ways", 20),), "cpu", 0, budget), registry)["seeds"]
    assert ways["test"] != seeds["conv4"]["test"]  # an option that changes episodes changes the seed


CONTRACT_PLUGIN = '''
"""A sinusoid suite scored on the adapted function's slope, with its own horizon and trajectory metrics,
and a pretrain variant that reports what it chose: the core contract a derivative or optimisation suite uses."""
import torch
from metaharness_plugins.algorithms._pretrain import Pretrain
from metaharness_plugins.algorithms.pretrain import PretrainHparams
from metaharness_plugins.suites._sinusoid import SinusoidSuite
from metaharness_plugins.suites.sinusoid import SinusoidConfig

from harness import AlgorithmSpec, TaskSuiteSpec, hookimpl


class SlopeSinusoid(SinusoidSuite):
    metric_name, metric_label = "slope_mse", "slope MSE"
    trajectory_labels = {"first": "before adapting"}

    def score(self, predictor, query_x, query_y):
        assert torch.is_grad_enabled(), "the runner must not score under no_grad"
        (slope,) = predictor.derivatives(query_x, 1)
        return (slope ** 2).mean()  # how far from flat the adapted function is

    def adaptation_steps(self, split):
        return {"val": 1, "test": 3}[split]

    def trajectory_metrics(self, values):
        return {"first": values[0], "mean_over_steps": sum(values) / len(values)}

    def describe(self):
        return {"leaderboard_note": "scored on slopes"}


class Choosy(Pretrain):
    def describe(self):
        return {"chosen": {"inner_lr": 0.25}}


@hookimpl
def harness_register_task_suites():
    return [TaskSuiteSpec(name="slope-sinusoid", factory=SlopeSinusoid, config=SinusoidConfig,
                          task_kind="regression", description="sinusoid scored on slopes")]


@hookimpl
def harness_register_algorithms():
    return [AlgorithmSpec(name="choosy", factory=Choosy, hparams=PretrainHparams, task_kinds={"regression"},
                          description="pretrain that says what it chose", paper="none")]
'''


def test_suites_score_adapted_learners_fix_horizons_and_add_trajectory_metrics(tmp_path):
    from harness.leaderboard import build_tables
    from harness.registry import build_plugin_manager
    from harness.render import display_table
    from harness.specs import Budget, Cell

    plugin = tmp_path / "contract_plugin.py"
    plugin.write_text(CONTRACT_PLUGIN)
    registry = build_plugin_manager([str(plugin)], entry_points=False)
    budget = Budget(iterations=4, val_interval=2, val_episodes=3, test_episodes=5, threads=1)
    records = [run_one(Cell("choosy", (), "slope-sinusoid", (("shots", 5),), "cpu", seed, budget, "g"),
                       registry, in_process=True) for seed in (0, 1)]
    for record in records:
        assert record["status"] == "ok", record.get("traceback", record["reason"])
        metric = record["metric"]
        # The suite's horizon (3 test steps), not pretrain's own test_steps (10).
        assert [s["step"] for s in metric["per_step"]] == [0, 1, 2, 3]
        assert metric["name"] == "slope_mse" and metric["label"] == "slope MSE"
        trajectory = metric["trajectory"]
        assert trajectory["first"]["mean"] == pytest.approx(metric["per_step"][0]["mean"])
        assert trajectory["first"]["label"] == "before adapting" and trajectory["first"]["n"] == 5
        steps_mean = sum(s["mean"] for s in metric["per_step"]) / 4
        assert trajectory["mean_over_steps"]["mean"] == pytest.approx(steps_mean)
        assert trajectory["mean_over_steps"]["label"] == "mean over steps"
        assert record["algorithm_info"] == {"chosen": {"inner_lr": 0.25}}
    ((_, table),) = build_tables(records).items()
    assert table.attrs["notes"][0] == "scored on slopes"
    shown = display_table(table)
    assert list(shown["chosen"]) == ["inner_lr=0.25"]
    assert "before adapting ↓" in shown.columns and "mean over steps ↓" in shown.columns
    firsts = [r["metric"]["trajectory"]["first"]["mean"] for r in records]
    assert table["trajectory_first_mean"].iloc[0] == pytest.approx(sum(firsts) / 2)
