"""harness.cache: suites' cache files are written whole or not at all."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from harness.cache import save_atomic


def test_save_atomic_writes_the_blob_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "c.pt"
    save_atomic({"images": torch.arange(6, dtype=torch.uint8)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["images"], torch.arange(6, dtype=torch.uint8))
    save_atomic({"images": torch.zeros(2)}, path)  # replaced whole
    assert torch.equal(torch.load(path, weights_only=True)["images"], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_a_blob_that_cannot_be_saved_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_atomic({"x": 1}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # a lambda cannot be pickled
        save_atomic({"x": lambda: 0}, path)
    assert torch.load(path, weights_only=True) == {"x": 1} and os.listdir(tmp_path) == ["c.pt"]
