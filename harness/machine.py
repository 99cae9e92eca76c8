"""The harness runs on this machine: each run enters itself in a shared folder, so every run can tell
whether others shared the machine while its cells ran (their timings are then not exclusive).

An entry is a file holding an exclusive `flock` for as long as its run lives; the kernel drops the
lock when the process dies however it dies, so a dead run's entry is recognised (and removed) by the
next run that looks. The folder is `$HARNESS_RUNS_DIR`, else `metaharness-runs` in the system's
temporary folder (world-writable with the sticky bit, like /tmp, so runs of different users see
each other).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from pathlib import Path

RUNS_DIR_ENV = "HARNESS_RUNS_DIR"
_SUFFIX = ".run"


def runs_dir() -> Path:
    """Where runs enter themselves: `$HARNESS_RUNS_DIR`, else `<tmp>/metaharness-runs`."""
    return Path(os.environ.get(RUNS_DIR_ENV) or Path(tempfile.gettempdir()) / "metaharness-runs")


class MachineRuns:
    """This run's entry among the harness runs of the machine (a context manager), and a count of the others."""

    def __init__(self, info: dict[str, str] | None = None) -> None:
        self.info = dict(info or {})
        self.folder = runs_dir()
        self.path: Path | None = None
        self._fd = -1

    def __enter__(self) -> MachineRuns:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # shared by every user of the machine, like /tmp
                if self.folder.stat().st_uid == os.getuid():
                    self.folder.chmod(0o1777)
            name = f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
            staging = self.folder / f".{name}"
            fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, json.dumps({"pid": os.getpid(), **self.info}).encode())
            # Locked before it becomes visible, so nobody can take it for a dead run's entry.
            os.replace(staging, self.folder / name)
            self._fd, self.path = fd, self.folder / name
        except OSError:  # no shared folder to be found in: this run cannot see, or be seen by, others
            self.path = None
        return self

    def others(self) -> int:
        """How many other harness runs are alive on this machine now (removing dead runs' entries)."""
        if self.path is None:
            return 0
        alive = 0
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(_SUFFIX) and not n.startswith(".")]
        except OSError:
            return 0
        for name in names:
            path = self.folder / name
            if path == self.path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                alive += 1
            except OSError:
                continue
            else:  # nobody holds it: its run is gone
                with contextlib.suppress(OSError):
                    path.unlink()
            finally:
                os.close(fd)
        return alive

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self.path, self._fd = None, -1
