"""Ctrl-C, SIGTERM and SIGHUP as exceptions in the harness's main thread, so that every `finally` runs
(cells' process trees killed, claims released) before it exits; and raised again at the next
checkpoint when the code that was running swallowed them.

Python runs a signal handler between two bytecodes of whatever the main thread is doing; when that
is a weak-reference callback inside an import (or a plugin's `except BaseException`), the exception
is printed as "Exception ignored" and lost. The harness calls `checkpoint()` before every cell and
before publishing, so an interrupt it received is never lost, only delayed to the next checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []
_closing = [False]


class Interrupted(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt (which stands for SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _exception(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)


def _on_signal(signum: int, frame: Any) -> None:
    """The first signal interrupts; later ones are ignored while the harness cleans up and exits."""
    if _received or _closing[0]:
        return
    _received.append(signum)
    raise _exception(signum)


def install() -> dict[int, Any]:
    """Route SIGINT, SIGTERM and SIGHUP here; return the handlers they had (for `close`).

    A signal the harness was started with ignored (`nohup`, a background job) stays ignored.
    """
    _received.clear()
    _closing[0] = False
    previous = {}
    for sig in SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not in the main thread (an embedding program)
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, _on_signal)
    return previous


def checkpoint() -> None:
    """Raise the interrupt received earlier, if any, whose exception did not reach the harness."""
    if _received and not _closing[0]:
        raise _exception(_received[0])


def close(previous: dict[int, Any], *, exiting: bool) -> None:
    """The work is over and its exit code set: later signals change nothing.

    `exiting` (the `harness` command): they are ignored from now on, because Python puts the default
    handlers back while it shuts down and a late Ctrl-C would then kill it mid-way with another exit
    code (it leaves ignored signals ignored). Otherwise (a program that called the harness and goes
    on) its own handlers are put back.
    """
    _closing[0] = True
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_IGN if exiting else handler)
