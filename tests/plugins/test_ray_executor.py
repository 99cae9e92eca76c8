"""The `ray` executor on a real Ray cluster: a head and a second node started with `ray start` on this
machine's loopback address (token authentication on, a temporary folder of their own, torn down after,
nothing of theirs left running), and a local Ray instance.

A small sinusoid grid runs through the real `harness` command on the cluster and serially: the records are
equal in every metric and per-episode value, differing only in timings, execution and environment. A cell
that raises, a cell whose Ray worker is killed and a driver killed mid-cell are checked too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import harness
from harness.cells import now_iso, resolve_cell
from harness.errors import UsageError
from harness.executors import CellJob, ExecutorOptions
from harness.specs import Budget, Cell
from tests.conftest import FAULTY

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

RAY = str(Path(sys.executable).with_name("ray"))
#: Every process of the test cluster carries this variable (with the cluster's own value).
MARK = "HARNESS_TEST_RAY_CLUSTER"
GRID = """name = "ray-executor"
seeds = [0, 1]
backends = ["cpu"]

[budget]
iterations = 12
val_interval = 6
val_episodes = 4
test_episodes = 6
timeout = 120
threads = 1

[[block]]
algorithms = ["maml", "reptile"]
suites = [{ name = "sinusoid", shots = 5 }]
"""
FAILING = """
[[block]]
algorithms = [{ name = "raises", fail_at = 2 }]
suites = [{ name = "sinusoid", shots = 5 }]
seeds = [0]
"""
#: Algorithms for these tests: `kills-worker` SIGKILLs the Ray worker running its cell; `sleeper` writes its
#: pid to `marker` and then sleeps through its iterations (so a test can kill the driver meanwhile).
TEST_PLUGIN = '''"""Test algorithms that misbehave under Ray."""
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from harness import Algorithm, AlgorithmSpec, hookimpl


@dataclass(frozen=True)
class Params:
    marker: str = ""
    step_s: float = 1.0


class Base(Algorithm):
    def __init__(self, hparams, model, suite, backend):
        super().__init__(hparams, model, suite, backend)
        self.params = {k: v.detach().clone() for k, v in model.named_parameters()}
        if hparams.marker:
            Path(hparams.marker).write_text(str(os.getpid()))

    def meta_parameters(self):
        return self.params

    def adapt(self, support_x, support_y, steps):
        return [self.params] * (steps + 1)

    def predict(self, state, x):
        return torch.func.functional_call(self.model, state, (x,))


class KillsWorker(Base):
    def meta_train_step(self, batch):
        for parent in psutil.Process().parents():
            if parent.cmdline()[:1] and parent.cmdline()[0].startswith("ray::"):
                os.kill(parent.pid, signal.SIGKILL)
                time.sleep(60)  # the supervisor, whose lifeline was the Ray worker, kills this process
        raise RuntimeError("not running under a Ray worker")


class Sleeper(Base):
    def meta_train_step(self, batch):
        time.sleep(self.hparams.step_s)
        return 0.0


@hookimpl
def harness_register_algorithms():
    kinds = {"regression"}
    return [AlgorithmSpec("kills-worker", KillsWorker, Params, kinds, "kills the Ray worker running it"),
            AlgorithmSpec("sleeper", Sleeper, Params, kinds, "sleeps step_s per iteration")]
'''

#: A cell for the tests that need one without running it.
CELL = Cell("maml", (), "sinusoid", (("shots", 5),), "cpu", 0, Budget(iterations=2, threads=2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    """A Ray head and a second node on this machine, each with 1 CPU, and what a driver needs to join."""

    address: str
    env: dict[str, str]
    mark: str


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # Each node in a session of its own, in the foreground (--block): stopping that process stops the node.
    with log.open("w") as out:  # the node keeps its own copy of the file descriptor
        return subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_started(node: subprocess.Popen, log: Path, deadline: float) -> None:
    """Wait until `ray start` says its node is up (registered with the head), or fail with its log."""
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if node.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the test Ray cluster did not start ({log.name}): {log.read_text()[-3000:]}")
        time.sleep(0.2)


def _marked(mark: str) -> list[psutil.Process]:
    """Every live process whose environment carries the cluster's mark. Read raw: Ray's agents retitle
    themselves (setproctitle), which can garble the start of their environment for a parser."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes():
                proc = psutil.Process(int(pid))
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _stop(nodes: list[subprocess.Popen], mark: str) -> list[str]:
    """Stop the nodes (SIGTERM to each `ray start --block`, which stops its node's processes), then SIGKILL
    whatever carries the mark after a grace period; return what had to be killed."""
    for node in reversed(nodes):
        if node.poll() is None:
            os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _marked(mark)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    for node in nodes:
        node.wait(timeout=10)
    return [" ".join(p.cmdline()[:3]) for p in left if p.is_running()]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, serial: Background,
            local_instance: Background) -> Iterator[Cluster]:
    """The cluster (started while the serial reference run and the local instance's run go on)."""
    logs = tmp_path_factory.mktemp("ray-logs")
    # Ray's socket paths must stay short: its own folder directly under the temporary folder.
    temp = tempfile.mkdtemp(prefix="ray-test-")
    mark = secrets.token_hex(8)
    env = {**os.environ, MARK: mark, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0", "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    nodes = [_start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                     "--include-dashboard=false", "--temp-dir", temp, "--ray-client-server-port",
                     str(free_port()), "--dashboard-agent-listen-port", str(free_port())],
                    env, logs / "head.log")]
    try:
        _wait_started(nodes[0], logs / "head.log", deadline)
        nodes.append(_start(["--address", address, "--num-cpus", "1", "--dashboard-agent-listen-port",
                             str(free_port())], env, logs / "node.log"))
        _wait_started(nodes[1], logs / "node.log", deadline)
        yield Cluster(address, env, mark)
    finally:
        left = _stop(nodes, mark)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test Ray cluster outlived it: {left}"


def run_harness(grid: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`harness run --grid GRID` into cwd/res and cwd/lb, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", "--grid", grid, "--results", "res",
                           "--leaderboards", "lb", "--no-progress", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def records(results: Path) -> dict[str, dict]:
    out = {}
    for path in results.glob("*/*.json"):
        record = json.loads(path.read_text())
        out[record["cell_id"]] = record
    return out


#: What may differ between a Ray and a serial run of a cell: when and where it ran, and what it measured.
MAY_DIFFER = {"timings", "execution", "environment", "started_at", "finished_at", "memory"}


@dataclass
class Background:
    """A `harness run` going on in the background; `records()` waits for it and checks its exit code."""

    process: subprocess.Popen
    folder: Path
    code: int
    _records: dict[str, dict] | None = None

    def records(self) -> dict[str, dict]:
        if self._records is None:
            _, err = self.process.communicate(timeout=300)
            assert self.process.returncode == self.code, err[-3000:]
            self._records = records(self.folder / "res")
        return self._records


def start_run(folder: Path, grid: str, env: dict[str, str], *args: str, code: int) -> Background:
    (folder / "g.toml").write_text(grid)
    command = [sys.executable, "-m", "harness.cli", "run", "--grid", "g.toml", "--results", "res",
               "--leaderboards", "lb", "--no-progress", *args]
    return Background(subprocess.Popen(command, cwd=folder, env=env, text=True, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE), folder, code)


def _finish(run: Background) -> None:
    if run.process.poll() is None:
        run.process.kill()
    run.process.communicate()


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """The grid run serially, started at once (it goes on while the cluster starts and runs)."""
    env = {**os.environ, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1"}
    run = start_run(tmp_path_factory.mktemp("serial"), GRID + FAILING, env, "-p", FAULTY, code=1)  # a failure
    yield run
    _finish(run)


@pytest.fixture(scope="module")
def local_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """One cell through `--executor ray` without an address (a local Ray instance), started at once too.
    Token authentication from the environment, so the instance writes no token file into the home folder,
    and Ray's session files in a (short: socket paths) folder of the test's own."""
    ray_tmp = tempfile.mkdtemp(prefix="ray-local-")
    env = {**os.environ, "HARNESS_DISABLE_PLUGIN_AUTOLOAD": "1", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    one_cell = GRID.replace("seeds = [0, 1]", "seeds = [0]").replace('"maml", "reptile"', '"maml"')
    run = start_run(tmp_path_factory.mktemp("local"), one_cell, env, "--executor", "ray", code=0)
    yield run
    _finish(run)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def same_results(record: dict, want: dict) -> None:
    """Assert that two records of a cell hold the same results (the validation curve without its times)."""
    for key in set(want) - MAY_DIFFER:
        if key == "curve" and want[key]:
            assert [{k: v for k, v in p.items() if k != "elapsed_s"} for p in record[key]] == \
                [{k: v for k, v in p.items() if k != "elapsed_s"} for p in want[key]], record["cell_id"]
        else:
            assert record[key] == want[key], (record["cell_id"], key)


def test_cluster_runs_the_grid_as_serial_does(cluster: Cluster, serial: Background, tmp_path: Path) -> None:
    plugin = tmp_path / "ray_faults.py"
    plugin.write_text(TEST_PLUGIN)
    marker = tmp_path / "killed.pid"
    crash = (f'\n[[block]]\nalgorithms = [{{ name = "kills-worker", marker = "{marker}" }}]\n'
             'suites = [{ name = "sinusoid", shots = 5 }]\nseeds = [0]\n')
    (tmp_path / "g.toml").write_text(GRID + FAILING + crash)
    done = run_harness("g.toml", tmp_path, cluster.env, "--executor", "ray", "--address", cluster.address,
                       "-p", FAULTY, "-p", str(plugin))
    assert done.returncode == 1, done.stderr
    got = records(tmp_path / "res")
    assert len(got) == len(serial.records()) + 1
    nodes = set()
    for cell_id, want in serial.records().items():
        record = got[cell_id]
        assert record["status"] == want["status"], (cell_id, record["reason"])
        same_results(record, want)
        assert record["timings"] is None or record["timings"]["iterations"] == want["timings"]["iterations"]
        execution = record["execution"]
        assert execution["executor"] == "ray" and execution["exclusive"] is False
        nodes.add(execution["ray_node"])
    # Two cells in flight, one CPU per node: Ray has to place them on both nodes.
    assert len(nodes) == 2
    failed = got[next(c for c in got if c.startswith("raises"))]
    assert failed["status"] == "failed" and "injected failure" in failed["reason"]
    crashed = got[next(c for c in got if c.startswith("kills-worker"))]
    assert crashed["status"] == "failed" and "Ray worker running the cell died" in crashed["reason"]
    assert crashed["execution"]["executor"] == "ray"
    # The cell's own process went with its worker (its supervisor's lifeline was the worker).
    assert not psutil.pid_exists(int(marker.read_text())) or \
        psutil.Process(int(marker.read_text())).status() == psutil.STATUS_ZOMBIE
    assert f"FAILED: {crashed['cell_id']}" in done.stderr


# SIGKILL: the driver cannot clean up, Ray's ownership model must (the dead owner's tasks are killed, and
# with their worker the cell's tree). SIGINT (Ctrl-C): the driver force-cancels its tasks and exits 130.
@pytest.mark.parametrize("sig", [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGKILL", "SIGINT"])
def test_a_stopped_driver_stops_its_cells_on_the_cluster(cluster: Cluster, tmp_path: Path, sig: int) -> None:
    plugin = tmp_path / "ray_faults.py"
    plugin.write_text(TEST_PLUGIN)
    marker = tmp_path / "sleeper.pid"
    (tmp_path / "g.toml").write_text(
        'name = "ray-kill"\nbackends = ["cpu"]\n[budget]\niterations = 200\nval_interval = 100\n'
        'val_episodes = 2\ntest_episodes = 2\ntimeout = 300\nthreads = 1\n'
        f'[[block]]\nalgorithms = [{{ name = "sleeper", marker = "{marker}" }}]\n'
        'suites = [{ name = "sinusoid", shots = 5 }]\n')
    log = tmp_path / "driver.log"
    with log.open("w") as out:
        command = [sys.executable, "-m", "harness.cli", "run", "--grid", "g.toml", "--results", "res",
                   "--leaderboards", "lb", "--no-progress", "--executor", "ray", "--address", cluster.address,
                   "-p", str(plugin)]
        driver = subprocess.Popen(command, cwd=tmp_path, env=cluster.env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.is_file() and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        assert marker.is_file(), f"the cell never started: {log.read_text()[-3000:]}"
        cell = psutil.Process(int(marker.read_text()))
        os.kill(driver.pid, sig)
        code = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    expected = -signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGINT
    assert code == expected, log.read_text()[-3000:]
    gone, alive = psutil.wait_procs([cell], timeout=30)
    assert not alive, f"the cell {cell.pid} outlived its driver ({signal.Signals(sig).name})"
    assert not list((tmp_path / "res").glob("*/*.json"))  # an interrupted cell has no record
    if sig == signal.SIGINT:  # released on the way out (a killed driver's is swept by the next run)
        assert not list((tmp_path / "res").glob("*/*.claim"))


def test_a_cell_that_fits_no_node_stops_the_run_before_it_starts(cluster: Cluster, tmp_path: Path) -> None:
    # 16 TiB of memory_limit: Ray's memory resource of no node here is that large.
    (tmp_path / "g.toml").write_text(GRID.replace("threads = 1", "threads = 1\nmemory_limit = 16777216"))
    done = run_harness("g.toml", tmp_path, cluster.env, "--executor", "ray", "--address", cluster.address)
    assert done.returncode == 2, done.stderr
    assert re.search(r"cell maml/\S+ needs 1 CPU, 16777216 MiB memory \(its backend and budget\), more than "
                     r"any node of the Ray cluster has \(.*: 1 CPU, 0 GPU", done.stderr), done.stderr
    assert not list((tmp_path / "res").glob("*/*.json"))


def test_a_local_ray_instance_runs_cells_without_an_address(local_instance: Background,
                                                             serial: Background) -> None:
    (record,) = local_instance.records().values()
    same_results(record, serial.records()[record["cell_id"]])
    assert record["execution"]["executor"] == "ray" and record["execution"]["exclusive"] is False


# --- without a cluster ---



def test_addresses_and_options_are_checked_before_anything_starts() -> None:
    from metaharness_plugins.executors._ray import CONNECT_TIMEOUT_S, RayExecutor, parse_address

    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("ray://head.example:10001") == ("head.example", 10001)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("auto") is None
    for bad in ("10.0.0.5", "head:0", "head:70000", "http://head:6379", "head:port"):
        with pytest.raises(UsageError, match="is not a Ray address: give HOST:PORT"):
            parse_address(bad)
    with pytest.raises(UsageError, match="use it with the serial executor"):
        RayExecutor(ExecutorOptions(in_process=True))
    executor = RayExecutor(ExecutorOptions(address=f"127.0.0.1:{free_port()}"))  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UsageError, match="cannot reach the Ray cluster at 127.0.0.1:.*`ray start --head"):
        executor.start([CellJob(CELL, {})])
    assert time.monotonic() - started < CONNECT_TIMEOUT_S
    RayExecutor(ExecutorOptions(address="10.255.255.1:6379")).start([])  # nothing to run: nothing to join


def test_resources_come_from_the_backend_and_budget() -> None:
    from metaharness_plugins.executors._ray import capacity, resources_for

    assert resources_for(CellJob(CELL, {})) == {"num_cpus": 2, "num_gpus": 0}
    gpu = dataclasses.replace(CELL, backend="cuda", budget=Budget(memory_limit=512))
    assert resources_for(CellJob(gpu, {})) == {"num_cpus": 1, "num_gpus": 1, "memory": 512 * 2**20}
    nodes = [{"Resources": {"CPU": 8.0, "GPU": 2.0, "memory": 16.0 * 2**30}}, {"Resources": {"CPU": 5.0}}]
    assert capacity(nodes, {"num_cpus": 2, "num_gpus": 0}) == 4 + 2
    assert capacity(nodes, {"num_cpus": 1, "num_gpus": 1}) == 2  # GPUs bound it; the second node has none
    assert capacity(nodes, {"num_cpus": 1, "num_gpus": 0, "memory": 10 * 2**30}) == 1


def test_plugin_files_travel_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from metaharness_plugins.executors._ray import local_plugin_files

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node-tmp"))
    here = tmp_path / "mine.py"
    here.write_text("X = 1\n")
    elsewhere = "/nonexistent/on/this/node/theirs.py"
    where = local_plugin_files({str(here): "X = 1\n", elsewhere: "Y = 2\n"})
    assert where[str(here)] == str(here)  # the same file here (one machine, or a shared file system)
    copy = Path(where[elsewhere])
    assert copy.name == "theirs.py" and copy.read_text() == "Y = 2\n"  # the plugin keeps its name
    changed = Path(local_plugin_files({str(here): "X = 2\n"})[str(here)])
    assert changed != here and changed.read_text() == "X = 2\n"  # the driver's text wins over another file


def test_a_node_with_other_code_refuses_the_cell(registry) -> None:
    from metaharness_plugins.executors._ray import _code_mismatch

    resolved = resolve_cell(CELL, registry)
    load_args = {"plugins": [], "entry_points": False, "env_plugins": False}
    same = {k: resolved[k] for k in ("config", "code_version", "fingerprint", "seeds")}
    assert _code_mismatch(CellJob(CELL, same, load_args)) == ""
    older = {**same, "code_version": {**same["code_version"], "harness": "0.0.1"}, "fingerprint": "other"}
    message = _code_mismatch(CellJob(CELL, older, load_args))
    here = harness.__version__
    assert f"runs other code than the driver (harness {here!r} here, '0.0.1' on the driver)" in message


def test_a_lost_task_still_gets_a_record(registry) -> None:
    import ray

    from metaharness_plugins.executors._ray import failure_record

    job = CellJob(CELL, resolve_cell(CELL, registry))
    lost = failure_record(job, ray.exceptions.NodeDiedError("node 1a2b died"), now_iso())
    assert lost["status"] == "failed" and lost["cell_id"] == CELL.id
    assert lost["reason"] == "the Ray node running the cell was lost (NodeDiedError: node 1a2b died)"
    assert lost["execution"]["executor"] == "ray" and lost["execution"]["exclusive"] is False
    oom = failure_record(job, ray.exceptions.OutOfMemoryError("memory monitor"), now_iso())
    assert oom["reason"].startswith("out of memory: Ray's memory monitor killed the worker")
