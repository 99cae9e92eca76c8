"""Extra measurements (the `harness_register_measurements` plugin kind): specs, registration, the grid key
with file:line errors, fingerprints that change only where a measurement is enabled (the committed records
keep theirs), the runner's per-episode calls and the record's columns, and the CLI path end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cells import resolve_cell, run_one
from harness.errors import GridError
from harness.grid import load_grid
from harness.measuring import Measurement
from harness.registry import build_plugin_manager
from harness.results import ResultStore, validate_record
from harness.specs import Budget, Cell, MeasurementSpec, measurement_requests
from tests.conftest import REPO, run_cli

#: A measurement plugin as a third party writes one: the number of query points, the first prediction
#: (which moves with adaptation), and an option; and one whose optional dependency is missing.
PROBE_PLUGIN = '''
from dataclasses import dataclass

from harness import hookimpl
from harness.measuring import Measurement
from harness.specs import MeasurementSpec


@dataclass(frozen=True)
class ProbeOptions:
    scale: float = 1.0
    undeclared: bool = False

    def __post_init__(self):
        if self.scale <= 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")


class Probe(Measurement):
    def columns(self):
        return {"points": ("query points", None), "first": ("first prediction", True)}

    def measure(self, predictor, query_x, query_y, generator):
        values = {"points": self.options.scale * len(query_x), "first": float(predictor(query_x[:1]).sum())}
        return {**values, "surprise": 1.0} if self.options.undeclared else values


@hookimpl
def harness_register_measurements():
    return [MeasurementSpec(name="probe", factory=Probe, options=ProbeOptions, description="a probe",
                            task_kinds=frozenset({"regression"})),
            MeasurementSpec(name="needs-missing", factory=Probe, options=ProbeOptions,
                            description="unavailable", requires=("no_such_module_here",))]
'''

BUDGET = Budget(iterations=4, val_interval=2, val_episodes=2, test_episodes=5, threads=1)


@pytest.fixture(scope="module")
def probe_registry(tmp_path_factory: pytest.TempPathFactory):
    plugin = tmp_path_factory.mktemp("plugins") / "probe_plugin.py"
    plugin.write_text(PROBE_PLUGIN)
    return build_plugin_manager([str(plugin)], entry_points=False)


def _cell(measurements: list[tuple[str, dict]] = (), algorithm: str = "maml") -> Cell:
    hparams = (("meta_batch_size", 2),) if algorithm == "maml" else ()
    return Cell(algorithm, hparams, "sinusoid", (("shots", 5),), "cpu", 0, BUDGET,
                measurements=measurement_requests(measurements))


# --- specs and registration ---------------------------------------------------------------------------


def test_measurement_specs_check_their_fields() -> None:
    with pytest.raises(ValueError, match="options must be a dataclass type"):
        MeasurementSpec(name="m", factory="a.b:C", options=dict, description="")
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class WithSteps:
        steps: int = 1

    with pytest.raises(ValueError, match="may not have a field 'steps'; the harness reads that key itself"):
        MeasurementSpec(name="m", factory="a.b:C", options=WithSteps, description="")

    @dataclass(frozen=True)
    class Empty:
        pass

    with pytest.raises(ValueError, match="task kinds must be a non-empty subset"):
        MeasurementSpec(name="m", factory="a.b:C", options=Empty, description="",
                        task_kinds=frozenset({"video"}))
    with pytest.raises(TypeError, match="abstract"):
        Measurement(None, None)


def test_plugins_register_measurements_and_missing_dependencies_mark_them_unavailable(probe_registry) -> None:
    assert {"lipschitz", "noise-robustness", "probe", "needs-missing"} <= set(probe_registry.measurements)
    assert probe_registry.measurement("probe").available and probe_registry.measurement("probe").plugin
    missing = probe_registry.measurement("needs-missing")
    assert not missing.available and "no_such_module_here" in missing.reason
    with pytest.raises(Exception, match="unknown measurement 'lipschitzz'.*Did you mean 'lipschitz'"):
        probe_registry.measurement("lipschitzz")


# --- the grid key ------------------------------------------------------------------------------------


GRID = """
measurements = [{ name = "lipschitz" }, { name = "noise-robustness", sigmas = [0, 0.1] }]

[[block]]
algorithms = ["maml", "pretrain", "adam"]
suites = [{ name = "sinusoid", shots = 5 }, { name = "metaopt", steps = 10 }]

[[block]]
algorithms = ["fomaml"]
suites = [{ name = "sinusoid", shots = 5 }]
measurements = [{ name = "lipschitz", bound = false, steps = [0, 10] }]

[[block]]
algorithms = ["reptile"]
suites = [{ name = "sinusoid", shots = 5 }]
measurements = []
"""


def test_grid_measurements_reach_cells_change_fingerprints_not_ids(registry, write_grid) -> None:
    with_m = load_grid(str(write_grid(GRID, name="m")), registry)
    by_id = {c.id: c for c in with_m.cells}
    noise = ("noise-robustness", (("sigmas", (0, 0.1)),))
    assert by_id["maml/sinusoid[shots=5]/cpu/seed=0"].measurements == (("lipschitz", ()), noise)
    assert by_id["fomaml/sinusoid[shots=5]/cpu/seed=0"].measurements == (
        ("lipschitz", (("bound", False), ("steps", (0, 10)))),)
    assert by_id["reptile/sinusoid[shots=5]/cpu/seed=0"].measurements == ()
    metaopt = [c for c in with_m.cells if c.suite == "metaopt"]
    assert metaopt and all(c.measurements == () for c in metaopt)  # neither measures optimisation tasks
    unmeasured = "\n".join(line for line in GRID.splitlines() if not line.startswith("measurements"))
    plain = load_grid(str(write_grid(unmeasured, name="p")), registry)
    assert {c.id for c in plain.cells} == set(by_id)
    for cell in plain.cells:
        measured = by_id[cell.id]
        same = resolve_cell(cell, registry)["fingerprint"] == resolve_cell(measured, registry)["fingerprint"]
        assert same == (not measured.measurements), cell.id
    resolved = resolve_cell(by_id["maml/sinusoid[shots=5]/cpu/seed=0"], registry)
    assert resolved["config"]["measurements"] == [
        {"name": "lipschitz", "options": {"bound": True, "power_iterations": 200}, "steps": None},
        {"name": "noise-robustness", "options": {"sigmas": [0.0, 0.1], "samples": 1}, "steps": None}]
    assert resolved["code_version"]["measurements"] == {"lipschitz": "1", "noise-robustness": "1"}
    assert "measurements" not in resolve_cell(plain.cells[0], registry)["config"]
    fomaml = by_id["fomaml/sinusoid[shots=5]/cpu/seed=0"]
    assert Cell.from_dict(json.loads(json.dumps(fomaml.to_dict()))) == fomaml
    assert "measurements" not in plain.cells[0].to_dict()


@pytest.mark.parametrize(("entry", "message"), [
    ('[{ name = "lipschitzz" }]', r"unknown measurement 'lipschitzz'.*Did you mean 'lipschitz'"),
    ('[{ name = "noise-robustness", sigma = [0.1] }]',
     r"parameter of measurement 'noise-robustness'.*sigmas"),
    ('[{ name = "noise-robustness", sigmas = [-1] }]',
     r"sigmas must be a list of 1 to 100 finite noise levels >= 0"),
    ('[{ name = "lipschitz", bound = "yes" }]', r"parameter 'bound' got 'yes', expected bool"),
    ('[{ name = "lipschitz" }, { name = "lipschitz" }]', r"'lipschitz' is listed twice"),
    ('[{ name = "lipschitz", steps = [1, 1] }]', r"steps must be an adaptation step or a non-empty list"),
    ('[{ name = "lipschitz", steps = -1 }]', r"steps must be an adaptation step"),
    ('{ name = "lipschitz" }', r"must be a list of tables"),
    ('[{ sigmas = [0.1] }]', r"each entry needs a name"),
])
def test_bad_measurements_are_grid_errors_with_file_and_line(registry, write_grid, entry: str,
                                                              message: str) -> None:
    body = f'[[block]]\nalgorithms = ["maml"]\nsuites = ["sinusoid"]\nmeasurements = {entry}\n'
    path = write_grid(body)
    line = body.splitlines().index(f"measurements = {entry}") + 3  # name and backends lines come first
    with pytest.raises(GridError, match=rf"{path}:{line}: key 'measurements': .*{message}"):
        load_grid(str(path), registry)


def test_a_cell_in_two_blocks_needs_one_set_of_measurements(registry, write_grid) -> None:
    block = '[[block]]\nalgorithms = ["maml"]\nsuites = ["sinusoid"]\n'
    path = write_grid(block + block + 'measurements = [{ name = "lipschitz" }]\n')
    with pytest.raises(GridError, match="appears in blocks 1 and 2 with different measurements"):
        load_grid(str(path), registry)
    assert len(load_grid(str(write_grid(block + block, name="same")), registry).cells) == 1


def test_cells_with_an_unavailable_measurement_are_unavailable(probe_registry, write_grid) -> None:
    path = write_grid('[[block]]\nalgorithms = ["maml"]\nsuites = ["sinusoid"]\n'
                      'measurements = [{ name = "needs-missing" }]\n')
    grid = load_grid(str(path), probe_registry)
    assert not grid.cells and [s.status for s in grid.skipped] == ["unavailable"]
    assert "measurement 'needs-missing' unavailable: missing optional dependency" in grid.skipped[0].reason


def test_committed_records_keep_their_fingerprints(registry) -> None:
    """Records are reused by fingerprint: a committed cell resolves exactly as it did when its record was
    made, one without measurements as before they existed, a measured one with its measurements (for every
    committed record whose code versions are the current ones)."""
    paths = sorted((REPO / "results").glob("*/*.json"))
    if not paths:
        pytest.skip("no committed records")
    checked = 0
    for path in paths:
        record = json.loads(path.read_text())
        cell = Cell.from_dict(record["cell"])
        if cell.algorithm not in registry.algorithms or cell.suite not in registry.suites:
            continue
        resolved = resolve_cell(cell, registry)
        if resolved["code_version"] != record["code_version"]:
            continue  # a plugin's version changed since: its fingerprint is meant to change
        assert ("measurements" in record["cell"]) == bool(cell.measurements) == ("measurements" in record["config"])
        assert resolved["fingerprint"] == record["fingerprint"], path
        checked += 1
    assert checked >= len(paths) // 2, f"only {checked} of {len(paths)} committed records could be checked"


# --- the runner ----------------------------------------------------------------------------------------


def test_measured_records_carry_columns_and_keep_the_metric(registry, tmp_path: Path) -> None:
    plain = run_one(_cell(), registry, in_process=True)
    measured = run_one(_cell([("lipschitz", {}), ("noise-robustness", {"sigmas": [0, 0.5]})]), registry,
                       in_process=True)
    assert plain["status"] == measured["status"] == "ok", measured.get("traceback")
    assert plain["measurements"] is None and "measurement_s" not in plain["timings"]
    means = [s["mean"] for s in measured["metric"]["per_step"]]
    assert means == [s["mean"] for s in plain["metric"]["per_step"]]
    columns = measured["measurements"]
    assert set(columns) == {"lipschitz_grad_mean", "lipschitz_grad_max", "lipschitz_spectral_bound",
                            "noise_0_metric", "noise_0.5_metric"}
    assert columns["noise_0_metric"]["mean"] == measured["metric"]["mean"]  # the final step's clean metric
    assert columns["noise_0.5_metric"]["mean"] > measured["metric"]["mean"]  # noise hurts a sinusoid's MSE
    assert all(entry["n"] == 5 for entry in columns.values())
    assert columns["lipschitz_grad_max"]["mean"] <= columns["lipschitz_spectral_bound"]["mean"]
    assert columns["noise_0_metric"]["label"] == "MSE at noise σ=0"
    assert columns["noise_0_metric"]["higher_is_better"] is False
    assert columns["lipschitz_grad_mean"]["higher_is_better"] is None
    assert measured["timings"]["measurement_s"] > 0
    validate_record(measured)
    path = ResultStore(tmp_path / "results").write(measured)
    assert json.loads(path.read_text())["measurements"]["noise_0_metric"]["n"] == 5


def test_measured_steps_get_their_own_columns_and_impossible_steps_fail_the_cell(probe_registry) -> None:
    record = run_one(_cell([("probe", {"scale": 2.0, "steps": [0, 10]})]), probe_registry, in_process=True)
    assert record["status"] == "ok", record.get("traceback")
    columns = record["measurements"]
    assert set(columns) == {"points", "points@0", "points@10", "first", "first@0", "first@10"}
    assert columns["first"] == {**columns["first@10"], "label": "first prediction"}  # 10 is the final step
    assert columns["points@10"]["mean"] == 2.0 * 100  # a sinusoid test episode has 100 query points
    assert columns["first@0"]["label"] == "first prediction @0" and columns["first@0"]["higher_is_better"]
    assert columns["first@0"]["mean"] != columns["first@10"]["mean"]  # ten inner steps move the prediction
    failed = run_one(_cell([("probe", {"steps": [11]})]), probe_registry, in_process=True)
    assert failed["status"] == "failed"
    assert "measurement 'probe': steps names step 11, but this cell adapts for 10 steps" in failed["reason"]
    assert failed["timings"] is None  # refused before meta-training
    undeclared = run_one(_cell([("probe", {"undeclared": True})]), probe_registry, in_process=True)
    assert undeclared["status"] == "failed"
    assert "measurement 'probe' returned column 'surprise', which its columns() does not declare" in \
        undeclared["reason"]


@pytest.mark.slow  # two CLI runs in fresh interpreters: about 70 s on a shared 2-core machine
def test_the_cli_runs_a_measured_grid_and_reuses_its_records(tmp_path: Path, write_grid) -> None:
    body = ('measurements = [{ name = "noise-robustness", sigmas = [0.1] }]\n[[block]]\n'
            'algorithms = ["pretrain"]\nsuites = [{ name = "sinusoid", shots = 5 }]\n')
    grid = write_grid(body, name="measured")
    args = ("run", "--grid", str(grid), "--results", str(tmp_path / "res"),
            "--leaderboards", str(tmp_path / "lb"), "--no-progress", "--format", "csv")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (record_path,) = (tmp_path / "res").glob("*/*.json")
    record = json.loads(record_path.read_text())
    assert set(record["measurements"]) == {"noise_0.1_metric"}
    assert record["cell"]["measurements"] == [{"name": "noise-robustness", "options": {"sigmas": [0.1]}}]
    (table,) = (tmp_path / "lb").rglob("*.csv")
    assert "noise_0.1_metric" in table.read_text().splitlines()[0]
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "1 reused" in again.stdout + again.stderr, again.stdout + again.stderr
