"""harness.claims: one claimant per cell, stale claims (a dead pid here, an expired lease elsewhere) taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.claims import Claim, ClaimBook, Holder
from harness.results import ResultStore

CELL = "maml/sinusoid[shots=5]/cpu/seed=0"


def test_a_claimed_cell_is_busy_for_every_other_run_until_released(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    mine, theirs = ClaimBook(store, "run-a"), ClaimBook(store, "run-b")
    claim = mine.try_claim(CELL)
    assert isinstance(claim, Claim) and claim.path.name == "00000001.claim"
    holder = theirs.try_claim(CELL)
    assert isinstance(holder, Holder) and holder.run == "run-a" and holder.pid == os.getpid()
    assert theirs.holder(CELL) == holder
    mine.release(CELL)
    assert theirs.holder(CELL) is None
    assert isinstance(theirs.try_claim(CELL), Claim)
    assert [p.name for p in store.cell_dir(CELL).iterdir()] == ["00000001.claim"]


def test_the_claim_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    script = ("import sys; from harness.claims import ClaimBook; from harness.results import ResultStore; "
              f"ClaimBook(ResultStore(sys.argv[1]), 'dead-run').try_claim({CELL!r})")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)  # claims, then exits
    (stale,) = store.cell_dir(CELL).glob("*.claim")
    assert json.loads(stale.read_text())["run"] == "dead-run"
    book = ClaimBook(store, "alive")
    assert book.holder(CELL) is None
    claim = book.try_claim(CELL)
    assert isinstance(claim, Claim) and claim.path.name == "00000002.claim"
    assert not stale.exists()  # the stale claim it replaced is gone


def test_a_claim_from_another_machine_holds_until_its_lease_runs_out(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    folder = store.cell_dir(CELL)
    folder.mkdir(parents=True)
    foreign = folder / "00000003.claim"
    foreign.write_text(json.dumps({"host": "elsewhere", "boot_id": "x", "pid": 1, "run": "far", "cell_id": CELL}))
    book = ClaimBook(store, "here", lease_s=2.0)
    assert isinstance(book.try_claim(CELL), Holder)  # refreshed moments ago: alive
    os.utime(foreign, (time.time() - 3, time.time() - 3))
    claim = book.try_claim(CELL)
    assert isinstance(claim, Claim) and claim.path.name == "00000004.claim"


def test_refresh_renews_claims_and_reports_the_ones_taken_over(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    book = ClaimBook(store, "slow", lease_s=60)
    claim = book.try_claim(CELL)
    os.utime(claim.path, (0, 0))
    assert book.refresh() == [] and time.time() - claim.path.stat().st_mtime < 60
    (claim.path.parent / "00000002.claim").write_text(json.dumps({"run": "other"}))  # taken over meanwhile
    assert book.refresh() == [CELL]
    book.release(CELL)
    assert (claim.path.parent / "00000002.claim").exists()  # another run's claim is never removed
