"""Named points at which a process can be made to die on purpose, to test that every kill is survived.

`HARNESS_FAILPOINT="record-written:2,leaderboard-done"` kills this process with SIGKILL the 2nd time
it reaches the point `record-written` (a record's temporary file is written but not yet linked into
place), or the first time it reaches `leaderboard-done`. Unset (always, outside tests) it costs one
dictionary lookup. The points: `<what>-written` and `<what>-done` around every atomic write, for
`record`, `leaderboard` and `claim` (see `harness.files.atomic_write`).
"""

from __future__ import annotations

import os
import signal

ENV = "HARNESS_FAILPOINT"
_armed: dict[str, int] | None = None
_seen: dict[str, int] = {}


def _parse(text: str) -> dict[str, int]:
    armed = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition(":")
        armed[name] = int(count) if count.isdigit() and int(count) > 0 else 1
    return armed


def failpoint(name: str) -> None:
    """Die by SIGKILL here if `HARNESS_FAILPOINT` arms `name` and this is the armed occurrence."""
    global _armed
    if _armed is None:
        _armed = _parse(os.environ.get(ENV, ""))
    if name not in _armed:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
