"""The harness's exception hierarchy: every error a user can cause is one of these."""

from __future__ import annotations

from collections.abc import Iterable


class HarnessError(Exception):
    """Base class of every error the harness raises on purpose."""


class UsageError(HarnessError):
    """Bad input from the user: a name, an option, a grid file, a hyper-parameter."""


class PluginError(HarnessError):
    """A plugin is broken: it failed to import, registered a duplicate name, or misspelt a hook."""


class ParamError(UsageError):
    """A bad hyper-parameter, suite option or budget value; `key` names the field when one is to blame."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class GridError(UsageError):
    """A grid file is malformed or names something impossible; the message carries file:line and key."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UsageError:
    """Build the error for an unknown `kind` called `name`, listing valid names and the closest one."""
    valid = sorted(valid)
    import difflib

    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(valid) if valid else "(none registered)"
    noun, of, owner = kind.partition(" of ")
    return UsageError(f"unknown {kind} {name!r}.{hint} Valid {noun}s{of}{owner}: {listing}.")
