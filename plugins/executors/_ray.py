"""The `ray` executor's implementation: the driver connects to Ray (or starts a local instance), submits
each cell as a Ray task sized from its backend and budget, and turns every way a task can end into the
cell's record.

What travels to a node is plain data (the cell, its resolved configuration, how to rebuild the plugin
registry, the text of `-p` plugin files and the driver's plugin environment), never pickled plugin
objects, so a node needs only the harness and the grid's plugins installed. On the node the task checks
that it computes the cell's fingerprint as the driver did (the same code and plugin versions), then runs
the cell in the cell's own supervised process tree with its hard timeout (`harness.executors.CellJob`)
and returns the record; the driver writes it. Ray's ownership model (Wang et al. 2021, "Ownership: A
Distributed Futures System for Fine-Grained Tasks", NSDI) makes the driver the owner of every cell task:
when the driver dies, the cluster kills the tasks it owns, and with them the cells' process trees.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from harness.cellprocess import lazy_imports
from harness.cells import build_record, now_iso
from harness.errors import UsageError
from harness.executors import Cancelled, CellJob, Executor, ExecutorOptions, Placement, usable_cpus

#: Ray's own variable naming the cluster to join (`ray.init` reads it too).
ADDRESS_ENV = "RAY_ADDRESS"
#: How long joining a cluster may take to reach the head before the run stops with an error (seconds).
CONNECT_TIMEOUT_S = 10.0
#: The object store of a local instance: records are kilobytes, so a small store keeps Ray's footprint small.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
#: Plugin environment variables of the driver that the cells on the nodes see too.
PLUGIN_ENV = ("HARNESS_PLUGINS", "HARNESS_DISABLE_PLUGIN_AUTOLOAD")
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")
_RESOLVED_KEYS = ("config", "code_version", "fingerprint", "seeds")


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address `HOST:PORT` or `ray://HOST:PORT`; None for `auto` (a cluster started on
    this machine with `ray start`). UsageError for anything else."""
    if address == "auto":
        return None
    match = _ADDRESS.match(address.strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise UsageError(f"--address / {ADDRESS_ENV} {address!r} is not a Ray address: give HOST:PORT "
                         "(the head's GCS port, 6379 unless `ray start --head --port` chose another), "
                         "ray://HOST:PORT (Ray Client) or auto (the cluster started on this machine with "
                         "`ray start`)")
    return match["host"].strip("[]"), port


def resources_for(job: CellJob) -> dict[str, Any]:
    """The Ray resources a cell's task declares: CPUs = the budget's threads (1 when unset), one GPU for a
    `cuda` cell, and the budget's memory_limit (MiB) as Ray's memory resource when set."""
    budget = job.cell.budget
    resources: dict[str, Any] = {"num_cpus": budget.threads or 1,
                                 "num_gpus": 1 if job.cell.backend == "cuda" else 0}
    if budget.memory_limit:
        resources["memory"] = budget.memory_limit * 2**20
    return resources


def capacity(nodes: list[dict[str, Any]], demand: dict[str, Any]) -> int:
    """How many tasks of `demand` (`resources_for`) the alive `nodes` (`ray.nodes()`) hold at once."""
    total = 0
    for node in nodes:
        have = node.get("Resources", {})
        fits = [have.get("CPU", 0) // demand["num_cpus"]]
        if demand["num_gpus"]:
            fits.append(have.get("GPU", 0) // demand["num_gpus"])
        if demand.get("memory"):
            fits.append(have.get("memory", 0) // demand["memory"])
        total += int(min(fits))
    return total


def _describe_node(node: dict[str, Any]) -> str:
    have = node.get("Resources", {})
    return (f"{node.get('NodeManagerHostname', '?')}: {have.get('CPU', 0):g} CPU, "
            f"{have.get('GPU', 0):g} GPU, {have.get('memory', 0) / 2**30:.1f} GiB memory")


def _describe_demand(demand: dict[str, Any]) -> str:
    return ", ".join([f"{demand['num_cpus']} CPU"] + [f"{demand['num_gpus']} GPU"] * bool(demand["num_gpus"])
                     + [f"{demand.get('memory', 0) / 2**20:.0f} MiB memory"] * bool(demand.get("memory")))


class RayExecutor(Executor):
    """Cells as Ray tasks: on the cluster at `--address` / `RAY_ADDRESS`, else on a local Ray instance
    started for the run (as many CPUs as this process may use). `--workers N` caps the cells in flight;
    by default as many as the cluster's nodes can run at once. Timings are never exclusive."""

    name = "ray"
    exclusive = False
    runs_cells_here = False  # the nodes' own fork servers run the cells; the driver needs none

    def __init__(self, options: ExecutorOptions | None = None, registry: Any = None) -> None:
        super().__init__(options, registry)
        if self.options.in_process:
            raise UsageError("--in-process runs cells inside the harness process, one at a time: use it with "
                             "the serial executor")
        self.address = self.options.address or os.environ.get(ADDRESS_ENV) or None
        self.endpoint = parse_address(self.address) if self.address else None
        self._slots = self.options.workers or 1
        self._owns_connection = False
        self._task: Any = None
        self._shipped: dict[str, Any] = {}
        self._running: dict[Any, CellJob] = {}
        self._lock = threading.Lock()
        self._cancelling = False

    @property
    def slots(self) -> int:
        return self._slots

    # --- on the driver ---

    def start(self, jobs: list[CellJob]) -> None:
        """Join the cluster (or start a local instance), check that every cell fits on some node, size the
        slots, and prepare what travels with each task; UsageError before any cell runs. A run with nothing
        to do (every cell has its record) starts nothing."""
        if not jobs:
            return
        if ray.is_initialized():  # a program that connected itself (ray.init) keeps its connection
            self._owns_connection = False
        elif self.address:
            self._join()
        else:
            self._start_local()
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        demands = {}
        for job in jobs:
            demand = resources_for(job)
            demands.setdefault(tuple(sorted(demand.items())), (demand, job))
        for demand, job in demands.values():
            if not capacity(nodes, demand):
                where = "; ".join(map(_describe_node, nodes)) or "no alive node"
                self.close()
                raise UsageError(f"cell {job.cell.id} needs {_describe_demand(demand)} (its backend and "
                                 f"budget), more than any node of the Ray cluster has ({where}); add such a "
                                 "node, or lower the budget's threads / memory_limit")
        fit = min((capacity(nodes, demand) for demand, _ in demands.values()), default=0)
        self._slots = self.options.workers or max(1, fit)
        self._shipped = self._what_travels(jobs)
        self._task = ray.remote(run_on_node)

    def _join(self) -> None:
        if self.endpoint is not None:
            host, port = self.endpoint
            try:
                with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
                    pass
            except OSError as exc:
                raise UsageError(f"cannot reach the Ray cluster at {self.address} (--address / "
                                 f"{ADDRESS_ENV}): {exc.strerror or exc}; start its head with `ray start "
                                 f"--head --port {port}`, or leave --address out (and {ADDRESS_ENV} unset) "
                                 "for a local Ray instance") from None
        try:
            with _own_signal_handlers():
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # a version mismatch, a port that is not Ray's, a refused token
            why = f"{type(exc).__name__}: {exc}"
            if exc.__cause__ is not None:
                why += f" ({_last_line(exc.__cause__)})"
            raise UsageError(f"cannot join the Ray cluster at {self.address}: {why}; a cluster with token "
                             "authentication needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN, "
                             "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, and every node the same Ray and "
                             "Python versions as this one") from None
        self._owns_connection = True

    def _start_local(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local benchmark instance reports nothing
        try:
            with _own_signal_handlers():
                ray.init(address="local", num_cpus=len(usable_cpus()), include_dashboard=False,
                         object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.ERROR,
                         log_to_driver=False)
        except Exception as exc:
            raise UsageError(f"cannot start a local Ray instance: {type(exc).__name__}: {exc}") from None
        self._owns_connection = True

    def _what_travels(self, jobs: list[CellJob]) -> dict[str, Any]:
        """The plugin files, plugin environment and fork-server imports every task carries."""
        load_args = dict(jobs[0].load_args) if jobs else {}
        if load_args.get("entry_points") is None:  # decided by the driver's environment, not the node's
            load_args["entry_points"] = os.environ.get("HARNESS_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0")
        env = {name: os.environ.get(name, "") for name in PLUGIN_ENV}
        env_plugins = [p.strip() for p in env["HARNESS_PLUGINS"].split(",") if p.strip()]
        env["HARNESS_PLUGINS"] = ",".join(os.path.abspath(p) if p.endswith(".py") else p for p in env_plugins)
        paths = [p for p in [*load_args.get("plugins", []), *env["HARNESS_PLUGINS"].split(",")]
                 if p.endswith(".py")]
        files = {}
        for path in paths:
            try:
                files[path] = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"plugin file {path} cannot be read to send it to the Ray nodes: "
                                 f"{exc.strerror or exc}") from None
        return {"load_args": load_args, "env": env, "files": files, "preload": lazy_imports((job.cell for job in jobs), self.registry) if self.registry is not None else []}

    def submit(self, job: CellJob) -> concurrent.futures.Future:
        if self._task is None:
            raise RuntimeError("RayExecutor.submit before start")
        payload = {**self._shipped, "cell": job.cell.to_dict(),
                   "resolved": {key: job.resolved[key] for key in _RESOLVED_KEYS if key in job.resolved}}
        # No retries: a cell whose worker or node is lost gets a failed record saying so, and the next
        # `harness run` re-runs it (resume), rather than the cell silently running twice here.
        task = self._task.options(**resources_for(job), max_retries=0, name=f"harness-cell {job.cell.id}")
        ref = task.remote(payload)
        submitted = now_iso()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._running[ref] = job

        def finished(inner: concurrent.futures.Future) -> None:
            with self._lock:
                self._running.pop(ref, None)
            try:
                future.set_result(inner.result())
            except BaseException as exc:  # noqa: BLE001 - every way a task ends becomes a record
                if self._cancelling:
                    future.set_exception(Cancelled(job.cell.id))
                else:
                    future.set_result(failure_record(job, exc, submitted))

        ref.future().add_done_callback(finished)
        return future

    def cancel_all(self) -> None:
        """Force-cancel every cell task in flight: Ray kills the worker running it, whose end closes the cell
        supervisor's lifeline, which kills the cell's process tree; queued tasks never start."""
        self._cancelling = True
        with self._lock:
            refs = list(self._running)
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Disconnect (a local instance stops; on a cluster, Ray kills whatever this run's tasks left)."""
        if self._owns_connection:
            self._owns_connection = False
            with contextlib.suppress(Exception):
                ray.shutdown()


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """Keep this process's SIGINT, SIGTERM and SIGHUP handlers across `ray.init`, which sets its own SIGTERM
    handler (`sys.exit`): the harness's turn a signal into an interrupt that stops the cells and exits
    with the signal's code (`harness.interrupts`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def _last_line(exc: BaseException) -> str:
    """The last line of an error's text, up to its first sentence (Ray nests whole tracebacks in messages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1].split(". ")[0] if lines else type(exc).__name__


def failure_record(job: CellJob, exc: BaseException, started_at: str) -> dict[str, Any]:
    """The record of a cell whose Ray task ended without returning one: its worker or node was lost, Ray's
    memory monitor killed it, the task could not start on the node, or it was cancelled outside this run."""
    errors = ray.exceptions
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, errors.OutOfMemoryError):
        reason = "out of memory: Ray's memory monitor killed the worker running the cell (its node ran low)"
    elif isinstance(exc, errors.NodeDiedError):
        reason = "the Ray node running the cell was lost"
    elif isinstance(exc, errors.WorkerCrashedError):
        reason = ("the Ray worker running the cell died before returning its record (its cell processes are "
                  "killed with it)")
    elif isinstance(exc, errors.TaskCancelledError):
        reason = "the cell's Ray task was cancelled from outside this run"
    elif isinstance(exc, errors.RayTaskError):
        cause = getattr(exc, "cause", None) or exc
        text = str(cause).strip()
        reason = f"the cell's Ray task raised {type(cause).__name__}: {text.splitlines()[0] if text else ''}"
        if isinstance(cause, ImportError):
            reason += " (the harness and the grid's plugins must be installed on every node)"
    else:
        reason = f"the cell's Ray task failed: {type(exc).__name__}"
    if detail and not isinstance(exc, errors.RayTaskError):
        reason += f" ({type(exc).__name__}: {detail})"
    outcome = {"status": "failed", "reason": reason, "environment": {}}
    if isinstance(exc, errors.RayTaskError):
        outcome["traceback"] = str(exc)
    record = build_record(job.cell, job.resolved, outcome, mode="none", started_at=started_at,
                          finished_at=now_iso())
    record["execution"].update(executor="ray", exclusive=False)
    return record


# --- on the node ---

_REGISTRIES: dict[str, Any] = {}


def local_plugin_files(files: dict[str, str]) -> dict[str, str]:
    """Where each shipped plugin file is on this node: its own path when that holds the same text (the same
    machine, a shared file system), else a copy under the temporary folder, named as the original so the
    plugin keeps its name (and the records their code version)."""
    where = {}
    for path, text in files.items():
        try:
            same = Path(path).read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if same:
            where[path] = path
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        copy = Path(tempfile.gettempdir()) / f"harness-ray-plugins-{os.getuid()}" / digest / Path(path).name
        if not copy.is_file() or copy.read_text(encoding="utf-8") != text:
            copy.parent.mkdir(parents=True, exist_ok=True)
            part = copy.with_name(f".{copy.name}.{os.getpid()}")
            part.write_text(text, encoding="utf-8")
            os.replace(part, copy)
        where[path] = str(copy)
    return where


def run_on_node(payload: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run one cell on this node in its own process tree and return its record."""
    from harness.cellprocess import start_fork_server
    from harness.specs import Cell

    files = local_plugin_files(payload["files"])
    load_args = dict(payload["load_args"])
    load_args["plugins"] = [files.get(p, p) for p in load_args.get("plugins", [])]
    for name, value in payload["env"].items():  # before the fork server starts: the cells inherit its env
        if name == "HARNESS_PLUGINS":
            value = ",".join(files.get(v, v) for v in value.split(",") if v)
        os.environ[name] = value
    cell = Cell.from_dict(payload["cell"])
    job = CellJob(cell, payload["resolved"], load_args)
    mismatch = _code_mismatch(job)
    context = ray.get_runtime_context()
    if mismatch:
        now = now_iso()
        record = build_record(cell, job.resolved, {"status": "failed", "reason": mismatch, "environment": {}},
                              mode="none", started_at=now, finished_at=now)
    else:
        start_fork_server(payload.get("preload", ()))
        gpus = tuple(str(g) for g in ray.get_gpu_ids()) if cell.backend == "cuda" else None
        record = job.run(executor="ray", placement=Placement(gpus=gpus, threads=cell.budget.threads or 1))
    # Ray's node id, not the host name: records name no machine (harness.results.capture_environment).
    record["execution"].update(executor="ray", exclusive=False, ray_node=context.get_node_id())
    return record


def _code_mismatch(job: CellJob) -> str:
    """Why this node would not compute the cell the driver planned ('' when it would): another harness or
    plugin version, or a configuration that resolves otherwise."""
    from harness.cells import resolve_cell
    from harness.registry import HarnessPluginManager

    key = repr(sorted(job.load_args.items()))
    try:
        if key not in _REGISTRIES:
            _REGISTRIES[key] = HarnessPluginManager().load_all(**job.load_args)
        here = resolve_cell(job.cell, _REGISTRIES[key])
    except Exception as exc:  # noqa: BLE001 - a plugin missing on this node, say
        return (f"node {socket.gethostname()} cannot load the cell's plugins: {type(exc).__name__}: {exc} "
                "(the harness and the grid's plugins must be installed on every node)")
    if here["fingerprint"] == job.resolved.get("fingerprint"):
        return ""
    theirs, mine = job.resolved.get("code_version", {}), here["code_version"]
    differ = [f"{k} {mine.get(k)!r} here, {theirs.get(k)!r} on the driver" for k in sorted({*theirs, *mine})
              if theirs.get(k) != mine.get(k)] or ["the resolved configuration"]
    return (f"node {socket.gethostname()} runs other code than the driver ({'; '.join(differ)}): install the "
            "same harness and plugin versions on every node")
