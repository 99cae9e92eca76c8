"""Grid files: expansion into cells with deterministic ids, skipped pairs, and errors with file:line and key."""

from __future__ import annotations

import pytest

from harness.errors import GridError, UsageError
from harness.grid import load_grid

SINUSOID_BLOCK = """
[[block]]
algorithms = ["maml", "reptile"]
suites = [{ name = "sinusoid", shots = [5, 10] }]
"""


def test_shipped_grids_expand(registry):
    smoke = load_grid("smoke", registry)
    assert {c.algorithm for c in smoke.cells} == {"maml", "fomaml", "metasgd", "reptile", "pretrain"}
    assert all(c.backend == registry.auto_backend() for c in smoke.cells)
    default = load_grid("default", registry)
    by_suite = {s: [c for c in default.cells if c.suite == s] for s in {c.suite for c in default.cells}}
    assert len(by_suite.pop("sinusoid")) == 10  # 5 algorithms x K = 5, 10
    glyphs = by_suite.pop("glyphs")  # the offline image suite: every native image algorithm
    assert {c.algorithm for c in glyphs} == {"maml", "fomaml", "metasgd", "reptile", "pretrain", "anil",
                                             "protonet", "matchingnet"}
    assert {c.budget.iterations for c in glyphs} == {100}
    assert {c.algorithm for c in by_suite.pop("derivatives")} == {"maml", "metasgd", "fd-central", "spline"}
    assert {c.algorithm for c in by_suite.pop("metaopt")} == {"lstm-optimizer", "adam"}
    assert not by_suite
    mapping = load_grid("mapping", registry)
    assert len(mapping.cells) == 72 and mapping.executor == "local"
    assert {c.suite for c in mapping.cells} == {"sinusoid", "linear-regression"}
    glyphs = load_grid("glyphs", registry)
    assert len(glyphs.cells) == 48 and {c.budget.patience for c in glyphs.cells} == {5}
    assert {c.algorithm for c in glyphs.cells} >= {"snail", "mann", "siamese", "hypernet"}
    full = load_grid("full", registry)
    assert {c.algorithm for c in full.cells} == set(registry.algorithms)
    assert {c.seed for c in full.cells} == {0, 1, 2}


def test_cartesian_expansion_and_deterministic_ids(registry, write_grid):
    path = write_grid('seeds = [0, 1]\n' + SINUSOID_BLOCK.replace('"reptile"', '{ name = "reptile", inner_lr = [0.01, 0.02] }'))
    grid = load_grid(str(path), registry)
    ids = [c.id for c in grid.cells]
    assert len(ids) == len(set(ids)) == 2 * 3 * 2  # shots x (maml + 2 reptile lrs) x seeds
    assert "reptile[inner_lr=0.02]/sinusoid[shots=10]/cpu/seed=1" in ids
    assert "maml/sinusoid[shots=5]/cpu/seed=0" in ids
    assert [c.id for c in load_grid(str(path), registry).cells] == ids


def test_cli_filters_and_overrides(registry, write_grid):
    path = write_grid(SINUSOID_BLOCK)
    grid = load_grid(str(path), registry, algorithms=["reptile"], seeds=3, backends=["cpu"])
    assert {c.algorithm for c in grid.cells} == {"reptile"}
    assert {c.seed for c in grid.cells} == {0, 1, 2}
    with pytest.raises(UsageError, match="Did you mean 'reptile'"):
        load_grid(str(path), registry, algorithms=["reptil"])
    with pytest.raises(UsageError, match="unknown backend 'tpu'"):
        load_grid(str(path), registry, backends=["tpu"])


def test_union_of_blocks_merges_identical_cells(registry, write_grid):
    path = write_grid(SINUSOID_BLOCK + SINUSOID_BLOCK)
    assert len(load_grid(str(path), registry).cells) == 4


def test_same_cell_with_two_budgets_is_an_error(registry, write_grid):
    path = write_grid(SINUSOID_BLOCK + SINUSOID_BLOCK + "budget = { iterations = 99 }\n")
    with pytest.raises(GridError, match="different budgets"):
        load_grid(str(path), registry)


def test_impossible_pairs_are_skipped_with_reason(faulty_registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = ["classify-only", "healthy"]\nsuites = ["sinusoid"]\n')
    grid = load_grid(str(path), faulty_registry)
    assert [c.algorithm for c in grid.cells] == ["healthy"]
    (skipped,) = grid.skipped
    assert skipped.status == "skipped"
    assert "supports classification" in skipped.reason and "regression" in skipped.reason


def test_unavailable_backend_cells_are_skipped_with_reason(registry, write_grid):
    if registry.backends["cuda"].available:
        pytest.skip("this machine has a CUDA device")
    path = write_grid('backends = ["cpu", "cuda"]\n' + SINUSOID_BLOCK)
    grid = load_grid(str(path), registry)
    assert {c.backend for c in grid.cells} == {"cpu"}
    assert len(grid.skipped) == 4
    assert all(s.status == "unavailable" and "cuda" in s.reason for s in grid.skipped)


def test_malformed_toml_names_file_and_line(registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = ["maml"\nsuites = ["sinusoid"]\n')
    line = path.read_text().splitlines().index('suites = ["sinusoid"]') + 1  # where the open array is noticed
    with pytest.raises(GridError, match=rf"{path}:{line}: malformed TOML"):
        load_grid(str(path), registry)


def test_unknown_algorithm_in_grid_names_line_and_suggests(registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = ["mmal"]\nsuites = ["sinusoid"]\n')
    with pytest.raises(GridError) as info:
        load_grid(str(path), registry)
    message = str(info.value)
    line = path.read_text().splitlines().index('algorithms = ["mmal"]') + 1
    assert f"{path}:{line}" in message and "'algorithms'" in message and "Did you mean 'maml'" in message


def test_unknown_hyper_parameter_lists_valid_ones(registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = [{ name = "maml", inner_lrr = 0.1 }]\nsuites = ["sinusoid"]\n')
    with pytest.raises(GridError, match=r"key 'inner_lrr'.*Did you mean 'inner_lr'.*inner_steps"):
        load_grid(str(path), registry)


def test_wrong_type_of_hyper_parameter(registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = [{ name = "maml", inner_steps = "two" }]\nsuites = ["sinusoid"]\n')
    with pytest.raises(GridError, match=r"inner_steps.*'two'.*expected int"):
        load_grid(str(path), registry)


@pytest.mark.parametrize("setting", ["shots = 0", "shots = -3", "query = 0", "test_shots = 0"])
def test_impossible_suite_settings(registry, write_grid, setting):
    path = write_grid(f'[[block]]\nalgorithms = ["maml"]\nsuites = [{{ name = "sinusoid", {setting} }}]\n')
    key = setting.split()[0]
    with pytest.raises(GridError, match=rf"{path}:\d+: key '{key}'.*must be an integer from 1 to 100,000"):
        load_grid(str(path), registry)


def test_unknown_top_level_and_budget_keys(registry, write_grid):
    with pytest.raises(GridError, match=r"key 'seed'.*valid keys:.*seeds"):
        load_grid(str(write_grid("seed = 3\n" + SINUSOID_BLOCK)), registry)
    path = write_grid(SINUSOID_BLOCK + "[budget]\niterationz = 5\n", name="b")
    with pytest.raises(GridError, match=r"key 'iterationz'.*Did you mean 'iterations'\? Valid parameters of budget:"):
        load_grid(str(path), registry)
    path = write_grid(SINUSOID_BLOCK + "[budget]\niterations = 0\n", name="c")
    with pytest.raises(GridError, match=r"c.toml:\d+: key 'iterations': iterations must be an integer from 1 to"):
        load_grid(str(path), registry)


def test_unknown_grid_name_and_missing_file(registry):
    with pytest.raises(UsageError, match=r"unknown grid 'smok'.*Did you mean 'smoke'.*default"):
        load_grid("smok", registry)
    with pytest.raises(UsageError, match="does not exist"):
        load_grid("no/such/grid.toml", registry)


def test_block_without_suites_is_an_error(registry, write_grid):
    with pytest.raises(GridError, match="'suites'.*needs suites"):
        load_grid(str(write_grid('[[block]]\nalgorithms = ["maml"]\n')), registry)


def test_filter_naming_an_algorithm_the_grid_lacks_runs_it_with_defaults(faulty_registry, write_grid):
    grid = load_grid(str(write_grid(SINUSOID_BLOCK)), faulty_registry, algorithms=["healthy", "maml"])
    assert sorted(c.id for c in grid.cells) == sorted(
        f"{a}/sinusoid[shots={k}]/cpu/seed=0" for a in ("healthy", "maml") for k in (5, 10))
    grid = load_grid(str(write_grid(SINUSOID_BLOCK)), faulty_registry, algorithms=["classify-only"])
    assert not grid.cells and {s.status for s in grid.skipped} == {"skipped"}


def test_reported_numbers_reach_cells_and_the_leaderboard_column(registry):
    from harness.leaderboard import build_tables

    grid = load_grid("sinusoid-paper", registry)
    by_algo = {c.algorithm: c for c in grid.cells}
    assert by_algo["maml"].reported == "0.67 / 0.38 / 0.35" and by_algo["fomaml"].reported == ""
    record = {"schema": 1, "cell_id": by_algo["maml"].id, "cell": by_algo["maml"].to_dict(), "status": "ok",
              "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:01+00:00",
              "metric": {"name": "mse", "higher_is_better": False, "mean": 0.5, "ci95": 0.1, "n": 600,
                         "final_step": 10, "per_step": [{"step": s, "mean": 1.0 / (s + 1), "ci95": 0.1} for s in range(11)]}}
    (table,) = build_tables([record]).values()
    assert list(table["reported"]) == ["0.67 / 0.38 / 0.35"]


def test_reported_entry_with_unknown_algorithm_is_an_error(registry, write_grid):
    path = write_grid(SINUSOID_BLOCK + '[[reported]]\nalgorithm = "mamlx"\nsuite = "sinusoid"\nvalue = "1"\n')
    with pytest.raises(GridError, match=r"key 'reported'.*Did you mean 'maml'"):
        load_grid(str(path), registry)


def test_a_list_valued_parameter_is_one_value_and_a_list_of_lists_sweeps_it(registry, write_grid):
    one = write_grid('[[block]]\nalgorithms = [{ name = "metasgd", alpha_init = [0.01, 0.2] }]\nsuites = ["sinusoid"]\n')
    (cell,) = load_grid(str(one), registry).cells
    assert dict(cell.hparams) == {"alpha_init": [0.01, 0.2]}
    two = write_grid('[[block]]\nalgorithms = [{ name = "metasgd", alpha_init = [[0.01, 0.2], [0.0, 0.1]] }]\n'
                     'suites = ["sinusoid"]\n', name="two")
    assert len(load_grid(str(two), registry).cells) == 2


def test_suite_without_its_data_is_an_error_when_named_and_unavailable_under_a_wildcard(
        registry, write_grid, tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    named = write_grid(f'[[block]]\nalgorithms = ["maml"]\nsuites = [{{ name = "omniglot", data_root = "{empty}" }}]\n')
    with pytest.raises(GridError, match=r"key 'suites'.*omniglot.*cannot run here.*images_background_small1.zip.*not found"):
        load_grid(str(named), registry)
    wildcard = write_grid('[[block]]\nalgorithms = ["maml"]\nsuites = "*"\n', name="wild")
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    grid = load_grid(str(wildcard), registry)
    assert "omniglot" not in {c.suite for c in grid.cells} and "sinusoid" in {c.suite for c in grid.cells}
    (skipped,) = [s for s in grid.skipped if s.cell.suite == "omniglot"]
    assert skipped.status == "unavailable" and "HARNESS_DATA" in skipped.reason


def test_reported_entries_tied_to_a_suite_configuration_pick_the_most_specific(registry, write_grid):
    reported = "".join(
        f'[[reported]]\nalgorithm = "maml"\nsuite = "sinusoid"\nvalue = "{value}"\n{config}\n'
        for value, config in (("any K", ""), ("K=5", "config = { shots = 5 }"),
                              ("K=5, 20 queries", "config = { shots = 5, query = 20 }")))
    grid = load_grid(str(write_grid(SINUSOID_BLOCK + reported)), registry)
    values = {(c.algorithm, dict(c.suite_config)["shots"]): c.reported for c in grid.cells}
    assert values[("maml", 5)] == "K=5" and values[("maml", 10)] == "any K" and values[("reptile", 5)] == ""
    # A configuration entry matches defaults it names: query = 10 is the sinusoid suite's default.
    grid = load_grid(str(write_grid(SINUSOID_BLOCK + reported.replace("query = 20", "query = 10"))), registry)
    assert {c.reported for c in grid.cells if c.algorithm == "maml" and dict(c.suite_config)["shots"] == 5} == {
        "K=5, 20 queries"}


def test_reported_config_with_an_unknown_option_is_an_error(registry, write_grid):
    path = write_grid(SINUSOID_BLOCK + '[[reported]]\nalgorithm = "maml"\nsuite = "sinusoid"\nvalue = "1"\n'
                      'config = { shotz = 5 }\n')
    with pytest.raises(GridError, match=r"key 'reported'.*shotz.*Did you mean 'shots'"):
        load_grid(str(path), registry)


CHECKED_PLUGIN = '''
from metaharness_plugins.algorithms.pretrain import PretrainHparams

from harness import AlgorithmSpec, hookimpl


def needs_shots(hparams, suite_name, suite_config):
    shots = getattr(suite_config, "shots", None)
    return "" if shots is None or shots >= 3 else f"needs at least 3 support points, the suite gives {shots}"


@hookimpl
def harness_register_algorithms():
    return [AlgorithmSpec(name="picky", factory="metaharness_plugins.algorithms._pretrain:Pretrain",
                          hparams=PretrainHparams, task_kinds={"regression"}, description="pretrain, picky",
                          check=needs_shots)]
'''


def test_an_algorithms_own_check_refuses_impossible_pairs_before_any_cell_runs(write_grid, tmp_path):
    from harness.registry import build_plugin_manager

    plugin = tmp_path / "picky.py"
    plugin.write_text(CHECKED_PLUGIN)
    registry = build_plugin_manager([str(plugin)], entry_points=False)
    named = write_grid('[[block]]\nalgorithms = ["picky"]\nsuites = [{ name = "sinusoid", shots = [2, 5] }]\n')
    with pytest.raises(GridError, match=r"tiny.toml:4: key 'algorithms': algorithm 'picky' cannot run on suite "
                                        r"'sinusoid' with \[shots=2\]: needs at least 3 support points, the suite gives 2"):
        load_grid(str(named), registry)
    wildcard = write_grid('[[block]]\nalgorithms = "*"\nsuites = [{ name = "sinusoid", shots = [2, 5] }]\n',
                          name="wild")
    grid = load_grid(str(wildcard), registry)
    assert "picky/sinusoid[shots=5]/cpu/seed=0" in [c.id for c in grid.cells]
    (skip,) = [s for s in grid.skipped if s.cell.algorithm == "picky"]
    assert skip.cell.id == "picky/sinusoid[shots=2]/cpu/seed=0" and "needs at least 3 support points" in skip.reason


def test_a_block_can_leave_names_out_of_a_wildcard(registry, write_grid):
    path = write_grid('[[block]]\nalgorithms = "*"\nsuites = [{ name = "sinusoid", shots = 5 }]\n'
                      'exclude = ["maml", "reptile"]\n')
    algorithms = {c.algorithm for c in load_grid(str(path), registry).cells}
    assert "fomaml" in algorithms and not {"maml", "reptile"} & algorithms
    typo = write_grid('[[block]]\nalgorithms = "*"\nsuites = "sinusoid"\nexclude = ["mamll"]\n', name="typo")
    with pytest.raises(GridError, match=r"typo.toml:6: key 'exclude': unknown name 'mamll'. Did you mean 'maml'\?"):
        load_grid(str(typo), registry)
