"""Runs one cell in a process tree of its own, which never outlives its timeout or the harness.

Three processes take part. A fork server (multiprocessing's, started once per run with torch and the
builtin plugins imported) forks a *supervisor* per cell; the supervisor forks the *worker* that runs
the cell. The supervisor does nothing but watch:

- a lifeline pipe from the harness process: end of file means the harness is gone (killed by any
  signal, crashed) or wants the cell stopped;
- the worker's exit (a pidfd on Linux), which it reports with the worker's exit status, so a crash
  is named (`exit code 1`, `killed by SIGSEGV`) rather than guessed;
- the cell's timeout, which it enforces itself, so it holds even when the harness is stopped.

In every case it then kills the worker's process group and every other descendant (it is the child
subreaper of the tree, so even processes that double-fork or start their own session come back to it).
The supervisor and the worker each lead a process group of their own, so a Ctrl-C or hang-up sent to
the terminal's foreground group reaches the harness alone, which then stops the cells itself.

The cell inherits the fork server's liveness pipe from multiprocessing; the supervisor closes it first
thing, so the fork server sees the harness go and exits too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from typing import Any

#: How long past the timeout the harness waits for a supervisor's report before killing it itself.
REPORT_GRACE_S = 30.0
#: How long the harness waits for a supervisor to clean up and exit once told to stop.
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_FATAL = {
    signal.SIGKILL: "likely the OS out-of-memory killer",
    signal.SIGSEGV: "segmentation fault in native code",
    signal.SIGBUS: "bus error in native code",
    signal.SIGABRT: "abort in native code",
    signal.SIGFPE: "arithmetic fault in native code",
    signal.SIGILL: "illegal instruction in native code",
}


def describe_exit(returncode: int | None) -> str:
    """`exit code 3`, `killed by SIGSEGV (segmentation fault in native code)`, ... for a process's exit code
    as multiprocessing reports it (negative: the signal that ended it)."""
    if returncode is None:
        return "no exit status"
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"killed by signal {-returncode}"
    why = _FATAL.get(sig)
    return f"killed by {sig.name}" + (f" ({why})" if why else "")


#: Modules the fork server imports quietly in `warm_up` (comma-separated; set only while it is spawned).
WARM_IMPORTS_ENV = "HARNESS_FORKSERVER_IMPORTS"


def preload_modules() -> list[str]:
    """What the fork server imports once: torch, the harness, the core and bundled plugins (not `-p`
    files), then the warm-up."""
    from harness.registry import BUILTIN_PLUGINS, bundled_modules

    modules = ["harness.runner", "harness.cellprocess", *BUILTIN_PLUGINS, *bundled_modules()]
    return ["torch", "torch._inductor", "psutil", *dict.fromkeys(modules), "harness.forkserver_warmup"]


def warm_up() -> None:
    """In the fork server: import the run's optional libraries, remember the plugins' entry points and the
    static environment, and run a tiny forward and backward pass through `torch.func` and a convolution
    on one thread, so the lazy initialisation of those paths and the first touch of their code happen once
    here instead of in every cell (see the README for the fixed cost of a cell, before and after)."""
    import importlib
    import io

    import torch
    from torch.func import functional_call, grad, vmap

    from harness.registry import remember_entry_points
    from harness.results import remember_environment

    for name in filter(None, os.environ.pop(WARM_IMPORTS_ENV, "").split(",")):
        # Quietly: what an import prints (gym's banner when learn2learn imports it) would reach the terminal
        # once, from no cell; a module that fails here is imported, and fails, in the cell that needs it.
        with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
            importlib.import_module(name)
    remember_entry_points()
    remember_environment()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no thread pool is started here, so none is lost across the fork
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2, track_running_stats=False),
                                    torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 2))
        params = dict(model.named_parameters())
        x, y = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 0])

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x.unsqueeze(0), y.unsqueeze(0))
        torch.autograd.grad(sum(g.sum() for g in grads.values()) + loss(params, x, y), list(params.values()))
    finally:
        torch.set_num_threads(threads)


def _mp_context() -> Any:
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        # The fork server imports torch once; each cell forks from it (fast) without inheriting
        # any CUDA state or threads from the main process (safe).
        ctx.set_forkserver_preload(preload_modules())
        return ctx
    return multiprocessing.get_context("spawn")


def lazy_imports(cells: Iterable[Any], registry: Any) -> list[str]:
    """What the cells' algorithms, suites and backends import lazily: the optional modules they require and
    the modules their string factories name, for a fork server to import once rather than every cell."""
    from harness.specs import LazyFactory

    names = set()
    for cell in cells:
        for reg in (registry.algorithm(cell.algorithm), registry.suite(cell.suite), registry.backend(cell.backend)):
            names.update(getattr(reg.spec, "requires", ()))
            if isinstance(reg.spec.factory, LazyFactory):
                names.add(reg.spec.factory.target.partition(":")[0])
    return sorted(names)


def start_fork_server(extra: Sequence[str] = ()) -> None:
    """Start the fork server now (it imports torch meanwhile), if cells start from one here; it also
    imports `extra` modules, those the run's plugins import lazily (learn2learn), once for all cells.

    The server starts with SIGINT ignored, which Python then keeps: a Ctrl-C while it imports torch must
    not print a traceback from it (the harness process handles the Ctrl-C and stops the cells). Here
    SIGINT is blocked meanwhile, so a Ctrl-C during the spawn is held back (Linux keeps a blocked signal
    pending even while it is ignored) and delivered once the handler is back, never lost.
    """
    ctx = _mp_context()
    if ctx.get_start_method() != "forkserver" or not _in_main_thread():
        return
    from multiprocessing import forkserver

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what the server inherits through exec
    os.environ[WARM_IMPORTS_ENV] = ",".join(extra)  # read (and dropped) by the server's warm_up
    try:
        forkserver.ensure_running()
    finally:
        os.environ.pop(WARM_IMPORTS_ENV, None)
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def stop_fork_server() -> None:
    """Stop this process's fork server, if it runs; the next cell starts a fresh one (with its own
    imports). For programs that run several grids, and benchmarks."""
    from multiprocessing import forkserver

    with contextlib.suppress(Exception):
        forkserver._forkserver._stop()  # multiprocessing's own (private) shutdown of the server


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


#: Supervisors that reported their cell's tree gone and are exiting on their own.
_EXITING: list[Any] = []


def join_supervisors(timeout: float = STOP_GRACE_S) -> None:
    """Wait for the supervisors of finished cells to exit (killing one that has not within `timeout`)."""
    while True:
        try:
            process = _EXITING.pop()
        except IndexError:  # none left (another thread of a concurrent executor may have taken the last)
            return
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()


def run_in_process_tree(cell: Any, load_args: dict[str, Any], *, placement: dict[str, Any] | None = None,
                        cancel: Any = None) -> dict[str, Any]:
    """Run `cell` in a supervised child process; return its outcome (status, reason, result, environment).

    Never raises for the cell's own failures. If this process is interrupted meanwhile (Ctrl-C, a
    signal turned into an exception), the cell's whole process tree is killed before the exception
    propagates. `placement` pins the cell to CPU cores and GPUs (`harness.executors.Placement`);
    `cancel` (a `harness.executors.CancelToken`, for cells run from another thread than the main one)
    stops the cell when raised: its tree is killed and the outcome's status is "cancelled".
    """
    ctx = _mp_context()
    start_fork_server()
    join_supervisors()  # the previous cell's, which have had the time of this cell's start to exit
    timeout = float(cell.budget.timeout)
    outcome_r, outcome_w = ctx.Pipe(duplex=False)
    status_r, status_w = ctx.Pipe(duplex=False)
    life_r, life_w = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_supervise, args=(life_r, status_w, outcome_w, load_args, cell.to_dict(), timeout,
                                                   placement or {}),
                          daemon=False, name="harness-cell")  # not daemonic: cells may start workers
    process.start()
    for end in (outcome_w, status_w, life_r):
        end.close()
    outcome: dict[str, Any] | None = None
    ended: dict[str, Any] | None = None
    worker = 0
    try:
        waiting = [outcome_r, status_r, process.sentinel] + ([cancel] if cancel is not None else [])
        deadline = time.monotonic() + timeout + REPORT_GRACE_S
        while ended is None and status_r in waiting:
            ready = multiprocessing.connection.wait(waiting, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                ended = {"how": "timeout", "returncode": None}  # the supervisor failed to report in time
                break
            if cancel is not None and cancel in ready:
                ended = {"how": "cancelled", "returncode": None}
                break
            if outcome_r in ready:
                outcome = _receive(outcome_r, waiting) or outcome
            if status_r in ready:
                message = _receive(status_r, waiting)
                if message and message.get("worker"):
                    worker = int(message["worker"])
                elif message:
                    ended = message
            if process.sentinel in ready:
                waiting.remove(process.sentinel)
        if outcome is None and outcome_r in waiting and outcome_r.poll(0):
            outcome = _receive(outcome_r, waiting)  # sent just before the worker exited
    finally:
        life_w.close()  # the supervisor kills whatever is left of the cell, and exits
        if ended is not None and ended.get("how") not in ("timeout", "cancelled"):
            # It reported the cell's tree killed and reaped; its own exit (tens of milliseconds to tear down a
            # copy of the fork server) need not hold up the next cell: it is joined by `join_supervisors`.
            _EXITING.append(process)
            process = None
        else:
            process.join(STOP_GRACE_S)
        if process is not None and process.is_alive():
            process.kill()
            process.join()
            if worker:
                with contextlib.suppress(OSError):
                    os.killpg(worker, signal.SIGKILL)
        for end in (outcome_r, status_r):
            end.close()
    if ended is not None and ended["how"] == "cancelled":
        return {"status": "cancelled", "reason": "stopped: the run was interrupted", "result": {}, "environment": {}}
    if outcome is not None:
        return outcome
    if ended is None:
        reason = f"cell supervisor ended before reporting ({describe_exit(process.exitcode if process else None)})"
        return {"status": "failed", "reason": reason, "result": {}, "environment": {}}
    if ended["how"] == "timeout":
        return {"status": "timeout", "reason": f"cell exceeded its timeout of {timeout:g} s and its processes were "
                "killed", "result": {}, "environment": {}}
    reason = f"cell process ended before reporting: {describe_exit(ended.get('returncode'))}"
    return {"status": "failed", "reason": reason, "result": {}, "environment": {}}


def _receive(conn: Any, waiting: list[Any]) -> Any:
    """One message from `conn`, or None at its end (then `conn` leaves `waiting`)."""
    try:
        return conn.recv()
    except Exception:  # noqa: BLE001 - the end of the pipe (EOFError), or a message cut short by a kill
        waiting.remove(conn)
    return None


# --- in the supervisor --------------------------------------------------------------------------


def _supervise(life: Any, status: Any, outcome: Any, load_args: dict[str, Any], cell: dict[str, Any],
               timeout: float, placement: dict[str, Any]) -> None:
    """The supervisor's whole life: fork the worker, watch it, kill its tree, report how it ended."""
    _detach_from_fork_server()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # it stops when the lifeline says so
        signal.signal(sig, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    supervisor = os.getpid()
    worker = os.fork()
    if worker == 0:
        code = 0
        try:
            life.close()
            status.close()
            code = _worker(outcome, load_args, cell, supervisor, placement)
        finally:
            os._exit(code)
    outcome.close()
    _send(status, {"worker": worker})
    how, returncode = _watch(life, worker, time.monotonic() + timeout)
    _kill_tree(worker)
    _send(status, {"how": how, "returncode": returncode})


def _detach_from_fork_server() -> None:
    """Close the fork server's liveness pipe, which multiprocessing hands every child; while any process
    holds it, the fork server cannot tell that the harness is gone."""
    with contextlib.suppress(Exception):
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
        server._forkserver_pid = None
        server._forkserver_address = None


def _watch(life: Any, worker: int, deadline: float) -> tuple[str, int | None]:
    """Wait for the first of: the worker exits ("exited", its exit code), the lifeline ends ("stopped"),
    the deadline ("timeout")."""
    pidfd = -1
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(worker)
    watched = [life.fileno()] + ([pidfd] if pidfd >= 0 else [])
    try:
        while True:
            returncode = _exit_code(worker)
            if returncode is not None:
                return "exited", returncode
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            ready, _, _ = select.select(watched, [], [], min(remaining, 0.05 if pidfd < 0 else remaining))
            if life.fileno() in ready:
                return "stopped", _exit_code(worker)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _exit_code(pid: int) -> int | None:
    """The exit code of child `pid` once it has ended, else None. The child is left unreaped (a zombie), so
    its pid, and with it its process group, cannot be reused before the group is killed."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _kill_tree(worker: int) -> None:
    """SIGKILL the worker's process group and every descendant of this supervisor, and reap them all."""
    import psutil

    me = psutil.Process()
    for _ in range(200):
        with contextlib.suppress(OSError):
            os.killpg(worker, signal.SIGKILL)
        children = me.children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()
        _reap()
        if not children:
            return
        time.sleep(0.01)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _send(conn: Any, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the harness is gone: nobody to tell
        conn.send(message)


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value)


# --- in the worker -----------------------------------------------------------------------------


def apply_placement(placement: dict[str, Any], budget_threads: int | None) -> None:
    """Pin this process (and the threads it starts) to `placement["cpus"]`, show it only
    `placement["gpus"]` (before anything initialises CUDA), and give a cell whose budget leaves `threads`
    unset as many torch threads as it has cores."""
    if placement.get("cpus") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, placement["cpus"])
    if placement.get("gpus") is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in placement["gpus"])
    if budget_threads is None and placement.get("threads"):
        import torch

        torch.set_num_threads(int(placement["threads"]))


def _worker(conn: Any, load_args: dict[str, Any], cell_dict: dict[str, Any], supervisor: int,
            placement: dict[str, Any] | None = None) -> int:
    """Run the cell and send its outcome; the return value is the worker's exit code."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor:  # the supervisor died before the line above: nobody would watch us
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        from harness.registry import HarnessPluginManager
        from harness.runner import execute_cell
        from harness.specs import Cell

        cell = Cell.from_dict(cell_dict)
        apply_placement(placement or {}, cell.budget.threads)  # before the registry's backends look for GPUs
        registry = HarnessPluginManager().load_all(**load_args)
        limit = apply_memory_limit(cell.budget.memory_limit)
        outcome = execute_cell(cell, registry)
        if limit and outcome["status"] == "failed" and _out_of_memory(outcome.get("reason", "")):
            outcome["reason"] = (f"out of memory: the cell exceeded its memory_limit of {cell.budget.memory_limit} "
                                 f"MiB ({limit}): {outcome['reason']}")
    except BaseException as exc:  # noqa: BLE001 - report anything rather than dying silently
        from harness.storage import portable_text, portable_traceback

        outcome = {"status": "failed", "reason": portable_text(f"{type(exc).__name__}: {exc}"), "result": {},
                   "environment": {}, "traceback": portable_traceback(traceback.format_exc())}
    try:
        conn.send(outcome)
        conn.close()
    except OSError:  # the harness is gone; the supervisor is about to kill this process anyway
        return 1
    return 0


def _out_of_memory(reason: str) -> bool:
    return reason.startswith("MemoryError") or "can't allocate memory" in reason or "Cannot allocate memory" in reason


def apply_memory_limit(mib: int | None) -> str:
    """Limit this process's private memory (heap and anonymous mappings, RLIMIT_DATA on Linux) to what it
    holds now plus `mib` MiB; return a description of the limit, '' when none is set or possible."""
    if not mib or not sys.platform.startswith("linux"):
        return ""
    import resource

    held = 0
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/self/status"):  # noqa: SIM115 - a short read of a proc file
            if line.startswith("VmData:"):
                held = int(line.split()[1]) * 1024
    limit = held + mib * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return f"RLIMIT_DATA {limit / 2**20:.0f} MiB: {held / 2**20:.0f} MiB held at cell start + {mib} MiB"
