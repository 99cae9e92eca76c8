"""Importing learn2learn quietly: one helper the bundled plugins that use learn2learn share (not a plugin)."""

from __future__ import annotations

import contextlib
import io
import sys
from types import ModuleType


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
