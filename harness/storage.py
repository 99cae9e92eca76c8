"""Where suites keep their files: the data and cache roots (`$HARNESS_DATA`, `$HARNESS_CACHE`, or a
suite's own option), cache files written whole or not at all, load-or-build, and file digests.

Public API for suite authors: bundled and third-party suites resolve their folders here, so one variable
moves every suite's data, and records spell those roots portably (`portable_paths`, `portable_text`, `portable_traceback`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
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


def portable_paths(value: Any) -> Any:
    """`value` with machine-specific path prefixes in its strings spelt portably: the data and cache
    roots as `$HARNESS_DATA` / `$HARNESS_CACHE` and the home folder as `~`, so records can be published."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable_paths(v) for v in value]
    if not isinstance(value, str):
        return value
    prefixes = [(os.environ.get(env, ""), f"${env}") for env in (DATA_ENV, CACHE_ENV)]
    prefixes.append((str(Path.home()), "~"))
    for prefix, name in prefixes:
        prefix = prefix.rstrip("/")
        if prefix and (value == prefix or value.startswith(prefix + "/")):
            return name + value[len(prefix):]
        real = os.path.realpath(prefix) if prefix else ""
        if real and real != prefix and (value == real or value.startswith(real + "/")):
            return name + value[len(real):]
    return value


def portable_text(text: str) -> str:
    """`text` (an error message) with the data, cache and home folders spelt as `portable_paths` spells
    them wherever they occur in it, so the message can be published in a record."""
    roots = [(os.environ.get(env, ""), f"${env}") for env in (DATA_ENV, CACHE_ENV)]
    roots.append((str(Path.home()), "~"))
    forms = []
    for root, name in roots:
        root = root.rstrip("/")
        if root and root != "/":
            forms += [(form, name) for form in dict.fromkeys((root, os.path.realpath(root)))]
    for root, name in sorted(forms, key=lambda pair: -len(pair[0])):  # the deepest folder first
        text = re.sub(re.escape(root) + r"(?=/|\b|$)", lambda _: name, text)
    return text


def portable_traceback(text: str) -> str:
    """A traceback that does not say where this installation lives, so a failed cell's record can be
    published: a frame in a loaded module is spelt by the module's name (`harness/runner.py`,
    `metaharness_plugins/analysis/_sensitivity.py`, `torch/nn/modules/module.py`), any other frame's file as
    `portable_paths` spells it or as `.../name.py`; the data, cache and home folders elsewhere in the text
    (the exception's message) as `portable_text` spells them. Never raises: on any error (it runs in
    exception handlers, perhaps out of memory) the text comes back as it was."""
    try:
        files: dict[str, str] = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if not isinstance(path, str) or not path:
                continue
            tail = "/__init__.py" if Path(path).name == "__init__.py" else Path(path).suffix
            files[path] = files[os.path.realpath(path)] = name.replace(".", "/") + tail

        def spell(match: re.Match[str]) -> str:
            path = match.group(2)
            known = files.get(path) or files.get(os.path.realpath(path))
            if known is None:
                known = portable_paths(path)
                if os.path.isabs(known):  # no module and no portable root: the file's name alone
                    known = f".../{Path(path).name}"
            return f'{match.group(1)}"{known}"'

        return portable_text(re.sub(r'(?m)^(\s+File )"([^"]+)"', spell, text))
    except Exception:  # noqa: BLE001 - a record with the raw text beats no record
        return text
