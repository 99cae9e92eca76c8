"""Cache files for suites: written whole or not at all, so concurrent cells never read half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(blob: Any, path: Path) -> None:
    """`torch.save(blob)` to `path` through a temporary file in the same folder and a rename (creating
    the folder); raises OSError when the folder cannot be written, leaving no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(blob, handle)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
