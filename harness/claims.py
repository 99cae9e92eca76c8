"""Claims on cells in a results store, so that concurrent runs (processes, or machines sharing the folder)
never run the same cell twice, and a claim left by a dead run is taken over.

A claim is a small JSON file `<cell folder>/<generation>.claim` naming its owner (host, boot, pid and
the pid's start time, run id). It is created whole and exclusively (a temporary file hard-linked to
its name, which fails if the name exists), which works on local and network file systems alike. The
cell's current claim is its highest generation. A claim is stale when its owner is gone: on the same
machine and boot, when its pid no longer runs (or runs another program); elsewhere, when the owner
has not refreshed the file's time for a lease (`HARNESS_CLAIM_LEASE` seconds, default 120). A stale
claim is taken over by creating the next generation, which only one contender can do.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.files import atomic_write_text, boot_id, pid_alive

LEASE_ENV = "HARNESS_CLAIM_LEASE"
DEFAULT_LEASE_S = 120.0
_SUFFIX = ".claim"


def lease_seconds() -> float:
    """The claim lease: `HARNESS_CLAIM_LEASE` seconds when set to a positive number, else DEFAULT_LEASE_S."""
    try:
        value = float(os.environ.get(LEASE_ENV, ""))
    except ValueError:
        return DEFAULT_LEASE_S
    return value if value > 0 and value == value and value != float("inf") else DEFAULT_LEASE_S


def _pid_start(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


@dataclass(frozen=True)
class Claim:
    """A claim this process holds on `cell_id`, in the file `path`."""

    cell_id: str
    path: Path


@dataclass(frozen=True)
class Holder:
    """Who holds a cell another run is working on (from its claim file)."""

    host: str
    pid: int
    run: str
    claimed_at: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}" if self.host != socket.gethostname() else f"pid {self.pid}"


class ClaimBook:
    """This run's claims on the cells of one results store."""

    def __init__(self, store: Any, run_id: str, lease_s: float | None = None) -> None:
        self.store, self.run_id = store, run_id
        self.lease_s = lease_s if lease_s is not None else lease_seconds()
        self.held: dict[str, Claim] = {}
        self.lock = threading.RLock()  # the run's main thread claims, its watch thread renews
        self._me = {"host": socket.gethostname(), "boot_id": boot_id(), "pid": os.getpid(),
                    "pid_start": _pid_start(os.getpid()), "run": run_id}

    def try_claim(self, cell_id: str) -> Claim | Holder:
        """Claim `cell_id` for this run, taking over a stale claim; the live holder when another run has it."""
        with self.lock:
            return self._try_claim(cell_id)

    def _try_claim(self, cell_id: str) -> Claim | Holder:
        folder = self.store.cell_dir(cell_id)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            state = self._current(folder)
            if state is None:  # the newest claim was released or taken over meanwhile: look again
                continue
            generations, holder = state
            if holder is not None:
                return holder
            path = folder / f"{(generations[-1] if generations else 0) + 1:08d}{_SUFFIX}"
            text = json.dumps({**self._me, "cell_id": cell_id,
                               "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1)
            try:
                atomic_write_text(path, text + "\n", replace=False, point="claim")
            except FileExistsError:  # another run took this generation first: look again
                continue
            for generation in generations:  # the stale claims this one replaces
                with contextlib.suppress(OSError):
                    (folder / f"{generation:08d}{_SUFFIX}").unlink()
            claim = Claim(cell_id, path)
            self.held[cell_id] = claim
            return claim
        return Holder("?", 0, "", "")  # a claim race that would not settle: leave the cell to the others

    def _alive(self, owner: dict[str, Any], path: Path) -> bool:
        if owner.get("run") == self.run_id:
            return True
        if owner.get("host") == self._me["host"] and owner.get("boot_id") == self._me["boot_id"]:
            pid = owner.get("pid")
            if not isinstance(pid, int) or isinstance(pid, bool) or not pid_alive(pid):
                return False
            started = owner.get("pid_start")
            return not isinstance(started, (int, float)) or abs(_pid_start(pid) - started) < 1.0
        try:
            return time.time() - path.stat().st_mtime < self.lease_s
        except OSError:
            return False

    def release(self, cell_id: str) -> None:
        """Give up the claim on `cell_id` (after its record is written, or when it is not run after all)."""
        with self.lock:
            claim = self.held.pop(cell_id, None)
        if claim is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(claim.path.read_text(encoding="utf-8")).get("run") == self.run_id:
                claim.path.unlink()

    def release_all(self) -> None:
        """Give up every claim this run holds."""
        for cell_id in list(self.held):
            self.release(cell_id)

    def refresh(self) -> list[str]:
        """Renew every held claim's lease (its file time); return the cells whose claim was lost meanwhile."""
        lost = []
        with self.lock:
            held = list(self.held.items())
        for cell_id, claim in held:
            try:
                os.utime(claim.path)
                newest = _generations(claim.path.parent)[-1]
            except (OSError, IndexError):
                newest = -1
            if f"{newest:08d}{_SUFFIX}" != claim.path.name:
                lost.append(cell_id)
        return lost

    def sweep(self, cell_ids: list[str]) -> int:
        """Remove the claims of dead runs on `cell_ids` (a run killed after its record was written leaves its
        claim behind); return how many were removed. Only generations seen stale are removed, never a newer one."""
        removed = 0
        for cell_id in cell_ids:
            folder = self.store.cell_dir(cell_id)
            state = self._current(folder)
            if state is None or state[1] is not None:
                continue
            for generation in state[0]:
                with contextlib.suppress(OSError):
                    (folder / f"{generation:08d}{_SUFFIX}").unlink()
                    removed += 1
        return removed

    def holder(self, cell_id: str) -> Holder | None:
        """The live holder of `cell_id`'s claim, or None when nobody (alive) holds it."""
        state = self._current(self.store.cell_dir(cell_id))
        return state[1] if state is not None else None

    def _current(self, folder: Path) -> tuple[list[int], Holder | None] | None:
        """(the folder's claim generations, the live holder of the newest or None); None when the newest
        claim file vanished while being read."""
        generations = _generations(folder)
        if not generations:
            return generations, None
        top = folder / f"{generations[-1]:08d}{_SUFFIX}"
        try:
            owner = json.loads(top.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # damaged: stale once its lease has passed
            owner = {}
        if not isinstance(owner, dict):
            owner = {}
        if not self._alive(owner, top):
            return generations, None
        pid = owner.get("pid")
        return generations, Holder(str(owner.get("host", "?")), pid if isinstance(pid, int) else 0,
                                   str(owner.get("run", "")), str(owner.get("claimed_at", "")))


def _generations(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(name[: -len(_SUFFIX)]) for name in names
                  if name.endswith(_SUFFIX) and name[: -len(_SUFFIX)].isdigit())
