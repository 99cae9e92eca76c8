"""harness.machine: runs on one machine see each other while they live, and a killed run stops counting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.machine import MachineRuns

OTHER = """
import sys, time
from harness.machine import MachineRuns
with MachineRuns({"grid": "other"}):
    print("in", flush=True)
    time.sleep(60)
"""


def test_other_runs_are_counted_while_alive_and_dropped_when_killed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(tmp_path))
    with MachineRuns({"grid": "mine"}) as mine:
        assert mine.others() == 0 and mine.path is not None and mine.path.parent == tmp_path
        with subprocess.Popen([sys.executable, "-c", OTHER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HARNESS_RUNS_DIR": str(tmp_path)}) as other:
            try:
                assert other.stdout.readline() == "in\n"
                assert mine.others() == 1
            finally:
                other.send_signal(signal.SIGKILL)  # no chance to remove its entry
        deadline = time.monotonic() + 5
        while mine.others() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mine.others() == 0
        assert [p.name for p in tmp_path.iterdir()] == [mine.path.name]  # the dead run's entry was removed
    assert list(tmp_path.iterdir()) == []
