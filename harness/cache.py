"""Cache files for suites: written whole or not at all, so concurrent cells never read half a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.files import atomic_write


def save_atomic(blob: Any, path: Path) -> None:
    """`torch.save(blob)` to `path` through a temporary file in the same folder and a rename (creating
    the folder); raises OSError when the folder cannot be written, leaving no temporary file behind."""
    atomic_write(path, lambda handle: torch.save(blob, handle))
