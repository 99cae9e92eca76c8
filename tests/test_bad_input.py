"""Bad input, item by item: unusable output folders, grid values of the wrong type or range, records that
are not records, a plugin file named like a bundled plugin. Each is a clear message before any work
starts (exit code 2, nothing written), or, for a damaged record, one warning naming its file while
the rest of the store is used and the file is left as it was.

The commands run in this process (`harness.cli.main`, exactly what the console script calls), so the
table stays fast; tests/test_cli.py runs the command in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from harness import cli
from tests.conftest import TINY_BUDGET

BLOCK = '[[block]]\nalgorithms = ["pretrain"]\nsuites = [{ name = "sinusoid", shots = 5 }]\n'


def harness(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    """Run `harness ARGS` in `tmp_path`; (exit code, stdout, stderr)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = cli.main(list(args))
    finally:
        os.chdir(cwd)
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def grid_file(tmp_path: Path, top: str = "", budget: str = "", block: str = BLOCK, raw: bytes | None = None) -> str:
    """A tiny grid, with `budget`'s `key = value` lines replacing the tiny budget's, or `raw` bytes."""
    path = tmp_path / "bad.toml"
    if raw is not None:
        path.write_bytes(raw)
        return path.name
    lines = dict(line.split(" = ", 1) for line in TINY_BUDGET.strip().splitlines()[1:])
    lines.update(line.split(" = ", 1) for line in budget.strip().splitlines())
    table = "".join(f"{key} = {value}\n" for key, value in lines.items())
    path.write_text(f'name = "bad"\nbackends = ["cpu"]\n{top}\n[budget]\n{table}\n{block}')
    return path.name


# (what is wrong, grid pieces (top-level lines, budget lines, block) or raw bytes, extra arguments, message)
GRIDS = [
    ("timeout nan", {"budget": "timeout = nan\n"}, [], "key 'timeout': parameter 'timeout' got nan, expected a finite number"),
    ("timeout inf", {"budget": "timeout = inf\n"}, [], "parameter 'timeout' got inf, expected a finite number"),
    ("time_limit nan", {"budget": "time_limit = nan\n"}, [], "parameter 'time_limit' got nan, expected a finite number"),
    ("time_limit -inf", {"budget": "time_limit = -inf\n"}, [], "parameter 'time_limit' got -inf"),
    ("timeout negative", {"budget": "time_limit = -1\n"}, [], "time_limit must be a number of seconds above 0"),
    ("not UTF-8", {"raw": b'name = "caf\xe9"\n'}, [], "bad.toml:1: not UTF-8 text (byte 0xe9 at offset 11)"),
    ("deterministic 'yes'", {"budget": 'deterministic = "yes"\n'}, [], "parameter 'deterministic' got 'yes', expected bool"),
    ("test_seed 'x'", {"budget": 'test_seed = "x"\n'}, [], "parameter 'test_seed' got 'x', expected int"),
    ("test_seed negative", {"budget": "test_seed = -2\n"}, [], "test_seed must be an integer from 0 to 4,294,967,295"),
    ("threads 100000", {"budget": "threads = 100000\n"}, [], "threads must be an integer from 1 to 1024"),
    ("iterations 0", {"budget": "iterations = 0\n"}, [], "iterations must be an integer from 1 to 1,000,000,000, got 0"),
    ("iterations 1e10", {"budget": "iterations = 10000000000\n"}, [], "iterations must be an integer from 1 to"),
    ("test_episodes 1e7", {"budget": "test_episodes = 10000000\n"}, [], "test_episodes must be an integer from 1 to 1,000,000"),
    ("val_interval text", {"budget": 'val_interval = "often"\n'}, [], "parameter 'val_interval' got 'often', expected int"),
    ("memory_limit 0", {"budget": "memory_limit = 0\n"}, [], "memory_limit must be a number of MiB from 1"),
    ("patience 0", {"budget": "patience = 0\n"}, [], "patience must be a number of validations from 1"),
    ("patience 2.5", {"budget": "patience = 2.5\n"}, [], "parameter 'patience' got 2.5, expected int"),
    ("patience never stops", {"budget": "iterations = 400\nval_interval = 100\npatience = 3\n"}, [],
     "patience 3 can never stop meta-training early: 400 iterations validated every 100 hold 3 validation(s) "
     "before the last iteration, and a stop needs 4"),
    ("unknown budget key", {"budget": "iteration = 3\n"}, [], "unknown parameter of budget 'iteration'. Did you mean 'iterations'?"),
    ("seeds [-1]", {"top": "seeds = [-1]"}, [], "key 'seeds': seed -1 is out of range; seeds are integers from 0 to"),
    ("seeds [0, 0]", {"top": "seeds = [0, 0]"}, [], "seed 0 is listed twice"),
    ("seeds true", {"top": "seeds = true"}, [], "must be a positive integer N or a non-empty list of integer seeds"),
    ("seeds 1e8", {"top": "seeds = 100000000"}, [], "the grid expands to 100,000,000 cells (block 1: 100,000,000), more "
                                                 "than the limit of 100,000"),
    ("seeds 1e8, dry run", {"top": "seeds = 100000000"}, ["--dry-run"], "expands to 100,000,000 cells"),
    ("over --max-cells", {"top": "seeds = 4"}, ["--max-cells", "3"], "expands to 4 cells (block 1: 4), more than the limit of 3"),
    ("max_cells 0", {"top": "max_cells = 0"}, [], "key 'max_cells': must be a positive integer"),
    ("name not a string", {"raw": b"name = 3\n" + BLOCK.encode()}, [], "key 'name': must be a non-empty string, got 3"),
    ("backends a number", {"raw": b"backends = 3\n" + BLOCK.encode()}, [], "key 'backends': must be a name or a "
                                                                           "non-empty list of names, got 3"),
    ("unknown top-level key", {"top": "seed = 1"}, [], "key 'seed': unknown key in the top level"),
    ("meta_lr nan", {"block": '[[block]]\nalgorithms = [{ name = "maml", meta_lr = nan }]\nsuites = ["sinusoid"]\n'}, [],
     "key 'meta_lr': algorithm 'maml': parameter 'meta_lr' got nan, expected a finite number"),
    ("inner_lr inf in a sweep", {"block": '[[block]]\nalgorithms = [{ name = "maml", inner_lr = [0.1, inf] }]\n'
                                           'suites = ["sinusoid"]\n'}, [], "parameter 'inner_lr' got inf"),
    ("sinusoid shots 1e12", {"block": '[[block]]\nalgorithms = ["maml"]\nsuites = [{ name = "sinusoid", '
                                      'shots = 1000000000000 }]\n'}, [],
     "key 'shots': suite 'sinusoid': shots must be an integer from 1 to 100,000 (K >= 1), got 1000000000000"),
    ("no blocks", {"block": ""}, [], "a grid needs at least one [[block]]"),
]


@pytest.mark.parametrize(("what", "pieces", "extra", "message"), GRIDS, ids=[g[0] for g in GRIDS])
def test_a_bad_grid_is_refused_before_anything_runs_or_is_written(tmp_path, capsys, what, pieces, extra, message):
    name = grid_file(tmp_path, **pieces)
    before = snapshot(tmp_path)
    started = time.monotonic()
    code, out, err = harness(tmp_path, capsys, "run", "--grid", name, "--no-progress", *extra)
    assert code == 2, out + err
    assert message in err, err
    assert err.startswith(f"harness: error: {name}:") or err.startswith("harness: error: "), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing written: no results, no leaderboards, no claims
    assert time.monotonic() - started < 20  # refused up front, not after expanding 10^8 cells


def test_every_line_number_points_at_the_offending_key(tmp_path, capsys):
    name = grid_file(tmp_path, budget="deterministic = 1\n")
    lines = (tmp_path / name).read_text().splitlines()
    code, _, err = harness(tmp_path, capsys, "run", "--grid", name)
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("deterministic"))
    assert code == 2 and f"{name}:{number}: key 'deterministic'" in err


@pytest.mark.parametrize("option", ["--results", "--leaderboards"])
def test_an_output_folder_under_a_regular_file_is_refused_before_any_cell(tmp_path, capsys, option):
    name = grid_file(tmp_path)
    (tmp_path / "README.md").write_text("# notes\n")
    before = snapshot(tmp_path)
    code, _, err = harness(tmp_path, capsys, "run", "--grid", name, option, "README.md/x")
    assert code == 2
    assert f"harness: error: {option} folder README.md/x is not a folder (its parent README.md is a file)" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("option", ["--results", "--leaderboards"])
def test_a_read_only_output_folder_is_refused_before_any_cell(tmp_path, capsys, readonly_dir, option):
    name = grid_file(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = harness(tmp_path, capsys, "run", "--grid", name, option, str(readonly_dir / "out"))
    assert code == 2 and "cannot be written" in err and "read-only" in err, err
    assert snapshot(tmp_path) == before


def test_leaderboard_out_under_a_file_is_refused(tmp_path, capsys):
    name = grid_file(tmp_path)
    assert harness(tmp_path, capsys, "run", "--grid", name, "--no-progress")[0] == 0
    (tmp_path / "notes.txt").write_text("x")
    code, _, err = harness(tmp_path, capsys, "leaderboard", "--out", "notes.txt/boards")
    assert code == 2 and "--out folder notes.txt/boards is not a folder" in err


# --- records that are not records ----------------------------------------------------------------------

def _damage(record: dict, how: str) -> str:
    if how == "not JSON":
        return '{"schema": 1, "cell_id": "x'
    if how == "deeply nested":
        return '{"schema": 1, "cell_id": "x", "suite_info": ' + "[" * 100000 + "]" * 100000 + "}"
    if how == "another schema":
        return json.dumps({**record, "schema": 7})
    if how == "NaN":
        return json.dumps(record).replace('"mean": ', '"mean": NaN, "was": ', 1)
    field, value = how.split(" is ")
    return json.dumps({**record, field: json.loads(value)})


DAMAGE = ["cell is [1, 2]", 'metric is "high"', 'environment is "laptop"', 'memory is "lots"', 'timings is [3]',
          'status is "great"', "params is 1.5", "not JSON", "deeply nested", "another schema", "NaN"]


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_record_is_skipped_with_one_warning_by_leaderboard_show_and_run(tmp_path, capsys, how):
    name = grid_file(tmp_path, block='[[block]]\nalgorithms = ["pretrain", "fomaml"]\nsuites = [{ name = "sinusoid", '
                                     'shots = 5 }]\n')
    assert harness(tmp_path, capsys, "run", "--grid", name, "--no-progress")[0] == 0
    target = next((tmp_path / "results").glob("fomaml*/*.json"))
    target.write_text(_damage(json.loads(target.read_text()), how))
    damaged = target.read_bytes()

    code, out, err = harness(tmp_path, capsys, "leaderboard", "--out", "boards")
    assert code == 0, err
    assert err.count(str(Path("results") / target.parent.name / target.name)) == 1, err
    assert "harness: warning:" in err and "Traceback" not in err
    assert "pretrain" in out

    code, out, err = harness(tmp_path, capsys, "show", "pretrain")
    assert code == 0 and "pretrain/sinusoid" in out and err.count(target.name) == 1, err

    code, out, err = harness(tmp_path, capsys, "run", "--grid", name, "--no-progress")
    assert code == 0, err
    assert "re-running its cell fomaml/sinusoid[shots=5]/cpu/seed=0" in err and err.count(target.name) == 1
    assert "1 cells run, 1 reused" in out
    assert target.read_bytes() == damaged  # never deleted, never rewritten


def test_show_of_a_damaged_record_file_says_what_is_wrong(tmp_path, capsys):
    folder = tmp_path / "results" / "cell"
    folder.mkdir(parents=True)
    (folder / "r.json").write_text('{"schema": 1, "cell_id": "a", "status": "ok", "cell": "maml"}')
    code, _, err = harness(tmp_path, capsys, "show", "results/cell/r.json")
    assert code == 2 and "cell is a str, expected dict" in err


# --- a plugin file named like a bundled plugin -----------------------------------------------------------

def test_a_plugin_file_named_like_a_bundled_plugin_is_loaded_under_its_file_name(tmp_path, capsys):
    (tmp_path / "sinusoid.py").write_text(
        "from harness import AlgorithmSpec, hookimpl\n"
        "from metaharness_plugins.algorithms.pretrain import Pretrain, PretrainHparams\n"
        "@hookimpl\ndef harness_register_algorithms():\n"
        "    return [AlgorithmSpec('my-pretrain', Pretrain, PretrainHparams, {'regression'}, 'a copy')]\n")
    code, out, _ = harness(tmp_path, capsys, "list", "plugins", "-p", "sinusoid.py")
    assert code == 0 and "sinusoid.py" in out and "my-pretrain" in out
    name = grid_file(tmp_path)
    code, out, err = harness(tmp_path, capsys, "run", "-p", "sinusoid.py", "--grid", name, "--algorithm",
                             "my-pretrain", "--no-progress", "--in-process")
    assert code == 0, err
    assert "my-pretrain" in out
