"""harness.files: whole-or-nothing writes honouring the umask, the temporary files of killed writers,
and output folders checked before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.files import (
    atomic_write_text,
    check_output_dir,
    host_token,
    prepare_output_dirs,
    remove_stale_temp_files,
    stale_temp_files,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_are_written_whole_with_the_umasks_mode(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "a" / "b.md"
    atomic_write_text(path, "one")
    assert path.read_text() == "one" and path.stat().st_mode & 0o777 == 0o644
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["b.md"]
    os.umask(0o077)
    atomic_write_text(tmp_path / "private", "x")
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o600


def test_append_only_writes_never_replace_a_file(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    atomic_write_text(path, "first", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write_text(path, "second", replace=False)
    assert path.read_text() == "first" and os.listdir(tmp_path) == ["record.json"]


def test_a_write_that_fails_leaves_neither_a_file_nor_a_temporary(tmp_path: Path) -> None:
    def explode(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    from harness.files import atomic_write

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(tmp_path / "x", explode)
    assert os.listdir(tmp_path) == []


def test_temporary_files_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    cell = tmp_path / "cell"
    cell.mkdir()
    ours_dead = cell / f".r.json.tmp-{host_token()}-{dead_pid}-ab12"
    ours_live = cell / f".r.json.tmp-{host_token()}-{os.getpid()}-cd34"
    foreign_new = cell / f".r.json.tmp-00000000-{dead_pid}-ef56"
    foreign_old = cell / f".s.json.tmp-00000000-{dead_pid}-ef57"
    unrelated = cell / ".notes.tmp"
    for path in (ours_dead, ours_live, foreign_new, foreign_old, unrelated):
        path.write_text("half a record")
    os.utime(foreign_old, (0, 0))  # a writer elsewhere, a day and more ago
    assert stale_temp_files([tmp_path]) == sorted([ours_dead, foreign_old])
    assert remove_stale_temp_files([tmp_path]) == sorted([ours_dead, foreign_old])
    assert sorted(p.name for p in cell.iterdir()) == sorted(p.name for p in (ours_live, foreign_new, unrelated))


def test_output_folders_are_checked_without_creating_anything(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match=r"is not a folder \(its parent .*file.txt is a file\)"):
        check_output_dir(tmp_path / "file.txt" / "results", "--results folder")
    with pytest.raises(UsageError, match="is not a folder"):
        check_output_dir(tmp_path / "file.txt", "--results folder")
    check_output_dir(tmp_path / "new" / "deeper", "--results folder")
    assert not (tmp_path / "new").exists() and sorted(os.listdir(tmp_path)) == ["file.txt"]
    with pytest.raises(UsageError, match="file.txt"):  # one bad folder: none is created
        prepare_output_dirs([(tmp_path / "new" / "deeper", "--results folder"), (tmp_path / "file.txt", "--out folder")])
    assert not (tmp_path / "new").exists()
    prepare_output_dirs([(tmp_path / "new" / "deeper", "--results folder"), (tmp_path / "boards", "--out folder")])
    assert (tmp_path / "new" / "deeper").is_dir() and (tmp_path / "boards").is_dir()


def test_a_read_only_folder_is_refused(readonly_dir: Path) -> None:
    with pytest.raises(UsageError, match="cannot be written"):
        check_output_dir(readonly_dir / "results", "--results folder")
