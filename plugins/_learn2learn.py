"""Importing learn2learn quietly: one helper the bundled plugins that use learn2learn share (not a plugin)."""

from __future__ import annotations

import contextlib
import io
import sys
from types import ModuleType

#: How to get learn2learn 0.2.0: its sdist does not build as published on Python >= 3.11
#: (learnables/learn2learn#413), so `pip install learn2learn` is no hint.
INSTALL_HINT = "make learn2learn (or python scripts/install_learn2learn.py): learn2learn 0.2.0 from its sdist"


def import_learn2learn() -> ModuleType:
    """Import learn2learn, keeping the banner gym prints to stderr when learn2learn imports it out of
    the user's output (learn2learn's __init__ imports its gym subpackage unconditionally; nothing here
    uses gym). Anything else written to stderr during the import is passed through."""
    module = sys.modules.get("learn2learn")
    if module is not None:
        return module
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            import learn2learn
    finally:
        text = captured.getvalue()
        try:
            from gym_notices.notices import notices
        except ImportError:
            notices = {}
        for notice in notices.values():
            text = text.replace(notice + "\n", "")
        sys.stderr.write(text)
    return learn2learn
