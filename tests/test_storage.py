"""harness.storage: data and cache roots, cache files written whole or not at all, load-or-build."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from harness.storage import cache_folder, cached, data_folders, file_sha256, save_atomic


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


def test_roots_come_from_the_option_else_the_environment_else_the_home_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    monkeypatch.delenv("HARNESS_CACHE", raising=False)
    assert data_folders(None, "omniglot") == []
    assert cache_folder(None, "omniglot") == Path.home() / ".cache" / "metaharness" / "omniglot"
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    assert data_folders(None, "omniglot") == [tmp_path / "data" / "omniglot", tmp_path / "data"]
    assert cache_folder(None, "fc100") == tmp_path / "cache" / "fc100"
    assert data_folders(str(tmp_path / "mine"), "omniglot") == [tmp_path / "mine"]
    assert cache_folder(str(tmp_path / "c"), "omniglot") == tmp_path / "c"


def test_cached_builds_once_then_loads_and_rebuilds_a_stale_or_unreadable_file(tmp_path: Path) -> None:
    path, built = tmp_path / "c" / "blob.pt", []

    def build() -> dict:
        built.append(1)
        return {"version": 2, "x": torch.arange(3)}

    blob, hit = cached(path, build)
    assert not hit and built == [1] and torch.equal(blob["x"], torch.arange(3))
    blob, hit = cached(path, build, mmap=True)
    assert hit and built == [1] and torch.equal(blob["x"], torch.arange(3))
    _, hit = cached(path, build, valid=lambda b: b["version"] == 3)  # stale: built again
    assert not hit and built == [1, 1]
    path.write_bytes(b"not a torch file")
    _, hit = cached(path, build)
    assert not hit and built == [1, 1, 1] and torch.load(path, weights_only=True)["version"] == 2


def test_cached_in_a_folder_that_cannot_be_written_says_how_to_choose_another(readonly_dir: Path) -> None:
    from harness import UsageError

    with pytest.raises(UsageError, match="set the suite option cache_dir or \\$HARNESS_CACHE"):
        cached(readonly_dir / "blob.pt", lambda: {"x": torch.zeros(1)})


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
