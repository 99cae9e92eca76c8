"""Where suites keep their files: the data and cache roots (`$HARNESS_DATA`, `$HARNESS_CACHE`, or a
suite's own option), cache files written whole or not at all, load-or-build, and file digests.

Public API for suite authors: bundled and third-party suites resolve their folders here, so one variable
moves every suite's data, and records spell those roots portably (`runner.portable_paths`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.files import atomic_write

DATA_ENV = "HARNESS_DATA"
CACHE_ENV = "HARNESS_CACHE"
DEFAULT_CACHE = Path("~/.cache/metaharness")


def data_folders(option: str | None, name: str) -> list[Path]:
    """Folders that may hold suite `name`'s data, in order: the suite's `data_root` option alone when it
    is set, else `$HARNESS_DATA/<name>` then `$HARNESS_DATA` itself (a data root holding one folder per
    suite, or the suite's own folder), else none."""
    if option is not None:
        return [Path(option).expanduser()]
    if os.environ.get(DATA_ENV):
        base = Path(os.environ[DATA_ENV]).expanduser()
        return [base / name, base]
    return []


def cache_folder(option: str | None, name: str) -> Path:
    """Suite `name`'s cache folder: its `cache_dir` option, else `$HARNESS_CACHE/<name>`, else
    `~/.cache/metaharness/<name>`."""
    if option is not None:
        return Path(option).expanduser()
    base = Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE
    return base.expanduser() / name


def save_atomic(blob: Any, path: Path) -> None:
    """`torch.save(blob)` to `path` through a temporary file in the same folder and a rename (creating
    the folder); raises OSError when the folder cannot be written, leaving no temporary file behind."""
    import torch

    atomic_write(path, lambda handle: torch.save(blob, handle))


def cached(
    path: Path,
    build: Callable[[], dict[str, Any]],
    *,
    valid: Callable[[dict[str, Any]], bool] = lambda blob: True,
    mmap: bool = False,
) -> tuple[dict[str, Any], bool]:
    """(blob, from_cache): the tensors saved in `path` when it holds a readable blob that `valid` accepts,
    else `build()`, saved to `path` atomically first. An unreadable or stale file is only a missed
    shortcut (built again and replaced); a cache folder that cannot be written is a UsageError saying how
    to choose another. `mmap` maps the file instead of reading it, so cells share the page cache."""
    import torch

    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True, mmap=mmap)
            if isinstance(blob, dict) and valid(blob):
                return blob, True
        except Exception:  # noqa: S110 - any unreadable file is rebuilt below
            pass
    blob = build()
    try:
        save_atomic(blob, path)
    except OSError as exc:
        raise UsageError(f"cannot write the cache file {path}: {exc}; set the suite option cache_dir or "
                         f"${CACHE_ENV} to a writable directory") from exc
    return blob, False


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
