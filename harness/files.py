"""Files the harness writes: whole or not at all, honouring the umask, and the temporary files of killed writes.

Every record, leaderboard, claim and cache file is written to a temporary file in its own folder and
then renamed (or, for records, hard-linked, so an existing record can never be replaced) into place.
A temporary file is named after the process that writes it (`.NAME.tmp-HOST-PID-RANDOM`), so the
start of a run can remove those left by killed writers on this machine without touching the ones a
live process on this or another machine is still writing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from harness.errors import UsageError
from harness.failpoints import failpoint

#: Temporary files of writers on other machines are removed only when this much older (seconds).
FOREIGN_TEMP_AGE_S = 24 * 3600
_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+$")


def boot_id() -> str:
    """This machine's boot id (Linux), so a pid is only compared with pids of the same boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def host_token() -> str:
    """Eight hex digits naming this machine and boot (hostname + boot id): the `HOST` of temp-file names."""
    return hashlib.sha256(f"{socket.gethostname()}/{boot_id()}".encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a zombie counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{host_token()}-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], *, replace: bool = True,
                 point: str = "") -> None:
    """Write `path` whole or not at all: `write(handle)` fills a synced temporary file that is then
    renamed over `path` (`replace=True`) or hard-linked to it, failing with FileExistsError when
    `path` exists (`replace=False`: append-only stores). The file gets mode 0666 less the umask.

    `point` names the write for fault injection (`HARNESS_FAILPOINT`, see `harness.failpoints`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if point:
            failpoint(f"{point}-written")
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` exists: nothing already written is replaced
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_dir(path.parent)
    if point:
        failpoint(f"{point}-done")


def atomic_write_text(path: Path, text: str, *, replace: bool = True, point: str = "") -> None:
    """`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), replace=replace, point=point)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # makes the rename durable; not every platform opens folders
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def stale_temp_files(folders: Iterable[Path], *, depth: int = 2) -> list[Path]:
    """Temporary files of `atomic_write` under `folders` (at most `depth` levels down) whose writer is
    gone: a dead process of this machine and boot, or any writer when older than FOREIGN_TEMP_AGE_S."""
    mine, now, found = host_token(), time.time(), []
    for folder in folders:
        if not folder.is_dir():
            continue
        level = [folder]
        for _ in range(depth):
            nxt = []
            for directory in level:
                with contextlib.suppress(OSError):
                    for entry in os.scandir(directory):
                        if entry.is_dir(follow_symlinks=False):
                            nxt.append(Path(entry.path))
                            continue
                        match = _TEMP_RE.match(entry.name)
                        if match is None:
                            continue
                        ours = match["host"] == mine
                        if (ours and not pid_alive(int(match["pid"]))) or (
                                not ours and now - entry.stat().st_mtime > FOREIGN_TEMP_AGE_S):
                            found.append(Path(entry.path))
            level = nxt
    return sorted(found)


def remove_stale_temp_files(folders: Iterable[Path]) -> list[Path]:
    """Remove what `stale_temp_files` finds; return what was removed."""
    removed = []
    for path in stale_temp_files(folders):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def check_output_dir(path: Path, what: str) -> None:
    """Raise UsageError unless `path` is, or can be created as, a folder this process can write.

    Nothing is created: the first existing ancestor must be a writable folder, and `path` itself (if it
    exists) a writable folder. Writability is probed with a real temporary file, so read-only mounts
    and permissions are caught whoever runs (root included).
    """
    where = f"{what} {path}"
    probe_dir = Path(path)
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise UsageError(f"{where}: {probe_dir} is a broken symbolic link; give a folder that can be created")
        parent = probe_dir.parent
        if parent == probe_dir:
            break
        probe_dir = parent
    if not probe_dir.is_dir():
        inside = "" if probe_dir == Path(path) else f" (its parent {probe_dir} is a file)"
        raise UsageError(f"{where} is not a folder{inside}; give a folder that exists or can be created")
    probe = probe_dir / f".harness-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (read-only folder or file system)"
        raise UsageError(f"{where} cannot be written: {probe_dir}: {reason}") from None


def prepare_output_dirs(folders: list[tuple[Path, str]]) -> None:
    """Check every (folder, what it is for) with `check_output_dir`, then create them all: a bad one is
    an error before anything is created."""
    for path, what in folders:
        check_output_dir(path, what)
    for path, what in folders:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
