"""Fault injection, for real: `harness run` killed at seeded random moments and at every kind of write,
concurrent runs on one store, cells that hang, exit, segfault, run out of memory or leave processes
behind, and the sequence that used to shrink published leaderboards.

Every run is a real `harness` process. Its environment carries a mark that every process it starts
inherits (the fork server, cell supervisors and workers, what cells spawn), so the test can tell that
none of them survives.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.results import read_record
from tests.conftest import FAULTY

MARK = "HARNESS_TEST_RUN"
STEADY_GRID = """name = "faults"
backends = ["cpu"]
[budget]
iterations = 8
val_interval = 4
val_episodes = 4
test_episodes = 8
timeout = 60
threads = 1
[[block]]
algorithms = [{{ name = "healthy", step_s = {step_s}, lr = [{lrs}] }}]
suites = [{{ name = "sinusoid", shots = 5 }}]
"""
#: Leaderboard columns that are measured times or memory: everything else must match exactly.
MEASURED = {"meta_train_s", "time_per_iter_ms", "adapt_latency_ms", "peak_memory_mib"}


def start(args: list[str], cwd: Path, mark: str, **env: str) -> subprocess.Popen:
    """`harness ARGS` as its own session (like a job started from a terminal), carrying `mark`."""
    full = {**os.environ, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1", MARK: mark, **env}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=cwd, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def marked(mark: str) -> list[str]:
    """'pid command' of every live process whose environment carries `mark`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        except OSError:
            continue
        if f"{MARK}={mark}".encode() in environ:
            found.append(f"{pid} {command.decode(errors='replace')}")
    return found


def survivors(mark: str, within: float = 5.0) -> list[str]:
    """The marked processes still alive `within` seconds from now (checking as they go)."""
    deadline = time.monotonic() + within
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def records(results: Path) -> list[dict]:
    """Every record file under `results`, read strictly (a half-written record fails here)."""
    return [read_record(path) for path in sorted(results.glob("*/*.json"))]


def metric_rows(board: Path) -> list[dict[str, str]]:
    """The leaderboard CSV rows without the measured (timing, memory) columns."""
    (table,) = board.glob("*.csv")
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


def leftovers(*folders: Path) -> list[Path]:
    """Claim files, temporary files and write probes left in `folders`."""
    return [p for folder in folders for p in folder.rglob("*")
            if p.suffix == ".claim" or ".tmp-" in p.name or p.name.startswith(".harness-write-probe")]


@pytest.fixture
def healthy_grid(tmp_path: Path):
    def write(n_cells: int, step_s: float = 0.05, name: str = "faults.toml") -> Path:
        lrs = ", ".join(str(0.005 * (i + 1)) for i in range(n_cells))
        path = tmp_path / name
        path.write_text(STEADY_GRID.format(step_s=step_s, lrs=lrs))
        return path

    return write


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _seeds() -> list[int]:
    """The seeds of the kill trials: `HARNESS_FAULT_SEEDS` (`3`, `1,5`, `1-100`) for a longer campaign."""
    text = os.environ.get("HARNESS_FAULT_SEEDS", "20261201")
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += list(range(int(low), int(high or low) + 1))
    return seeds


@pytest.mark.parametrize("seed", _seeds())
def test_killed_at_random_moments_and_at_every_write_resumes_to_the_uninterrupted_result(tmp_path, healthy_grid, seed):
    n_cells = 8
    grid = str(healthy_grid(n_cells, step_s=0.02))
    args = ["run", "-p", FAULTY, "--grid", grid, "--no-progress"]
    # The uninterrupted run, beside the trials (its timings are not compared, its metrics are).
    uninterrupted = start([*args, "--results", "ref", "--leaderboards", "ref-boards"], tmp_path, "ref")
    try:
        outcomes = _kill_trials(tmp_path, args, n_cells, random.Random(seed))
    finally:
        code, _, err = _finish(uninterrupted)
    assert code == 0, err
    # Every write failpoint killed its run; the signals did (or came after the run had finished).
    assert all(code == -signal.SIGKILL for kind, *_, code in outcomes if kind == "failpoint"), outcomes
    assert any(code != 0 for kind, *_, code in outcomes if kind == "signal"), outcomes

    results, boards = tmp_path / "results", tmp_path / "leaderboards"
    code, out, err = _finish(start(args, tmp_path, "final"))
    assert code == 0, err
    final = records(results)
    assert sorted(r["status"] for r in final) == ["ok"] * n_cells  # exactly one ok record per cell
    assert len(metric_rows(tmp_path / "ref-boards" / "faults")) == n_cells
    assert metric_rows(boards / "faults") == metric_rows(tmp_path / "ref-boards" / "faults")
    assert leftovers(results, boards) == []


def _kill_trials(folder: Path, args: list[str], n_cells: int, rng: random.Random) -> list[tuple]:
    """Kill runs of the grid in `folder`, one trial at a time; (kind, what, cells left, exit code) per trial.

    First a kill inside each kind of write (the temporary file written; the file in place) of claims and
    records, at a seeded occurrence (they need at most five of the cells); then signals at seeded moments
    (while the harness starts and torch loads, while cells run, between them, while tables are written),
    each kind once in a seeded order; then kills inside the leaderboard writes, which every run reaches.
    """
    trials: list[tuple[str, object]] = [("failpoint", (point, rng.randint(1, 2))) for point in
                                        rng.sample(["claim-written", "claim-done", "record-written", "record-done"], 4)]
    trials += [("signal", name) for name in rng.sample(["KILL", "TERM", "INT", "HUP"], 4)]
    trials += [("failpoint", (point, 1)) for point in ("leaderboard-written", "leaderboard-done")]
    results = folder / "results"
    outcomes = []
    for number, (kind, what) in enumerate(trials):
        mark = f"trial-{number}"
        left = n_cells - (len(list(results.glob("*/*.json"))) if results.exists() else 0)
        if kind == "failpoint":
            point, occurrence = what
            proc = start(args, folder, mark, HARNESS_FAILPOINT=f"{point}:{occurrence}")
        else:  # within the harness's start (a few seconds) and, while cells are left, theirs
            delay = rng.uniform(0.3, 1.5 + 0.4 * left)
            proc = start(args, folder, mark)
            time.sleep(delay)
            sig = getattr(signal, f"SIG{what}")
            if what in ("INT", "HUP"):  # what a terminal sends: to the whole foreground process group
                os.killpg(proc.pid, sig)
            else:  # `kill PID`, `kill -9 PID`: the harness process alone
                proc.send_signal(sig)
            what = (what, round(delay, 2))
        code, _, err = _finish(proc)
        outcomes.append((kind, what, left, code))
        assert survivors(mark) == [], f"trial {kind} {what}: processes outlived the harness"
        assert "Traceback" not in err, f"trial {kind} {what}:\n{err}"
        if kind == "signal" and code != 0:
            sig = getattr(signal, f"SIG{what[0]}")
            assert code in (-sig, 128 + sig), (what, code, err)
            if sig != signal.SIGKILL:
                assert "records of finished cells are kept" in err, (what, code, err[-400:])
        elif code != -signal.SIGKILL:
            assert code == 0, (kind, what, err)
        per_cell = [r["cell_id"] for r in records(results)] if results.exists() else []
        assert len(per_cell) == len(set(per_cell)), f"trial {kind} {what}: a cell has two records"
    return outcomes


def test_a_cell_past_its_timeout_is_killed_even_while_the_harness_is_stopped(tmp_path):
    grid = tmp_path / "hang.toml"
    grid.write_text('name = "hang"\nbackends = ["cpu"]\n[budget]\niterations = 4\nval_interval = 2\nval_episodes = 2\n'
                    'test_episodes = 2\ntimeout = 2\n[[block]]\nalgorithms = [{ name = "sleeps", fail_at = 1, sleep_s = 3600.0 }]\n'
                    'suites = ["sinusoid"]\n')
    proc = start(["run", "-p", FAULTY, "--grid", str(grid), "--no-progress"], tmp_path, "stopped")
    deadline = time.monotonic() + 30
    while len(marked("stopped")) < 5 and time.monotonic() < deadline:  # harness, fork server, tracker, cell
        time.sleep(0.1)
    assert len(marked("stopped")) == 5, marked("stopped")  # the cell's supervisor and worker run
    proc.send_signal(signal.SIGSTOP)  # as if the harness hung, or were suspended with Ctrl-Z
    try:
        time.sleep(3)
        cell = [p for p in marked("stopped") if not p.startswith(f"{proc.pid} ")
                and "forkserver import main" not in p and "resource_tracker" not in p]
        assert cell == []  # the supervisor enforced the timeout on its own, and went
    finally:
        proc.send_signal(signal.SIGCONT)
    code, _, err = _finish(proc)
    assert code == 1 and "TIMEOUT" in err and survivors("stopped") == []


def test_concurrent_runs_on_one_store_split_the_cells(tmp_path, healthy_grid):
    grid = str(healthy_grid(5, step_s=0.08))
    for n_runs in (2, 3):
        folder = tmp_path / f"runs{n_runs}"
        folder.mkdir()
        procs = [start(["run", "-p", FAULTY, "--grid", grid, "--no-progress"], folder, f"conc-{n_runs}-{i}")
                 for i in range(n_runs)]
        finished = [_finish(proc) for proc in procs]
        for code, _, err in finished:
            assert code == 0, err
        ran = [int(out.split("\n\n")[-1].split(" cells run")[0].split()[-1]) for _, out, _ in finished]
        assert sum(ran) == 5 and all(n >= 1 for n in ran), ran  # split, each cell once
        found = records(folder / "results")
        assert len(found) == 5 and {r["status"] for r in found} == {"ok"}
        assert len({r["cell_id"] for r in found}) == 5
        assert any(r["execution"]["exclusive"] is False and r["execution"]["shared_with"] >= 1 for r in found)
        assert len(metric_rows(folder / "leaderboards" / "faults")) == 5  # each run waited for the others' cells
        assert leftovers(folder / "results") == []


def test_cells_that_hang_exit_segfault_or_run_out_of_memory_become_records(tmp_path):
    grid = tmp_path / "crashes.toml"
    grid.write_text("""name = "crashes"
backends = ["cpu"]
[budget]
iterations = 4
val_interval = 2
val_episodes = 2
test_episodes = 4
timeout = 3
threads = 1
memory_limit = 256
[[block]]
algorithms = ["healthy", { name = "sleeps", sleep_s = 3600.0 }, "exits", "segfaults", "hogs", "spawns"]
suites = [{ name = "sinusoid", shots = 5 }]
""")
    code, out, err = _finish(start(["run", "-p", FAULTY, "--grid", str(grid), "--no-progress"], tmp_path, "crash"))
    assert code == 1, err
    assert survivors("crash") == []  # spawns's children, one in a session of its own, went with it
    by_algorithm = {r["cell"]["algorithm"]: r for r in records(tmp_path / "results")}
    assert by_algorithm["healthy"]["status"] == "ok" and by_algorithm["spawns"]["status"] == "ok"
    assert by_algorithm["sleeps"]["status"] == "timeout" and "timeout of 3 s" in by_algorithm["sleeps"]["reason"]
    assert by_algorithm["exits"]["status"] == "failed"
    assert by_algorithm["exits"]["reason"].endswith("exit code 3")
    assert by_algorithm["segfaults"]["status"] == "failed"
    assert "killed by SIGSEGV (segmentation fault in native code)" in by_algorithm["segfaults"]["reason"]
    assert by_algorithm["hogs"]["status"] == "failed"
    assert by_algorithm["hogs"]["reason"].startswith("out of memory: the cell exceeded its memory_limit of 256 MiB")
    assert "Traceback" not in err


def test_a_filtered_run_or_a_second_grid_never_shrinks_a_published_table(tmp_path):
    base = """backends = ["cpu"]
[budget]
iterations = 4
val_interval = 2
val_episodes = 2
test_episodes = 4
threads = 1
"""
    (tmp_path / "first.toml").write_text('name = "first"\n' + base + '[[block]]\nalgorithms = ["pretrain", "fomaml", '
                                         '{ name = "healthy", lr = 0.01 }]\nsuites = [{ name = "sinusoid", shots = 5 }]\n')
    (tmp_path / "second.toml").write_text('name = "second"\n' + base + '[[block]]\nalgorithms = ["pretrain", "maml"]\n'
                                          'suites = [{ name = "sinusoid", shots = 5 }]\n')
    run = ["run", "-p", FAULTY, "--no-progress", "--grid"]
    table = tmp_path / "leaderboards" / "first" / "sinusoid_shots=5.csv"
    assert _finish(start([*run, "first.toml"], tmp_path, "shrink"))[0] == 0
    before = table.read_text()
    assert len(metric_rows(table.parent)) == 3
    code, out, _ = _finish(start([*run, "first.toml", "--algorithm", "pretrain"], tmp_path, "shrink"))
    assert code == 0 and "0 cells run, 1 reused" in out
    assert table.read_text() == before  # the same three rows, the same numbers
    code, out, _ = _finish(start([*run, "second.toml"], tmp_path, "shrink"))
    assert code == 0 and "1 cells run, 1 reused" in out  # pretrain's record is shared
    second = {row["algorithm"] for row in metric_rows(tmp_path / "leaderboards" / "second")}
    assert second == {"pretrain", "maml"}
    assert len(metric_rows(table.parent)) == 3
    assert "| 3 |" in (table.parent / "README.md").read_text()
    written = {p.relative_to(tmp_path / "leaderboards"): p.read_text() for p in (tmp_path / "leaderboards").rglob("*.*")}
    code, _, err = _finish(start(["leaderboard", "-p", FAULTY, "--out", "rebuilt"], tmp_path, "shrink"))
    assert code == 0, err
    rebuilt = {p.relative_to(tmp_path / "rebuilt"): p.read_text() for p in (tmp_path / "rebuilt").rglob("*.*")}
    assert rebuilt == written
    assert survivors("shrink") == []
    kept = json.loads(next((tmp_path / "results").glob("pretrain*/*.json")).read_text())
    assert kept["cell"]["grid"] == "first"  # the record itself is never rewritten
