"""Per-episode metric values in a record: every test episode's metric after every test-time step, compactly.

Every algorithm of a grid is tested on the same episodes (they derive from the suite configuration and
the test seed alone, `harness.cells.resolve_cell`), so two records of one table can be compared episode
by episode (paired tests, `harness.stats`). A record keeps the values under `per_episode`:

    {"split": "test", "seed": 123, "source": "sampled", "count": 600, "steps": 11,
     "dtype": "float64", "encoding": "zlib+base64", "values": "eJz..."}

`values` is the little-endian float64 array of shape [steps, count] (row k: the metric of every episode
after k adaptation steps), compressed with zlib and written in base64: exact, and about 5 KB for 600
episodes at one step. Episode i is the i-th episode drawn from `seed` (or the i-th of the suite's fixed
set when `source` is "fixed"), so (seed, i) identifies it across records.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

ENCODING = "zlib+base64"
DTYPE = "float64"
#: The fields of a record's `per_episode` entry.
FIELDS = ("split", "seed", "source", "count", "steps", "dtype", "encoding", "values")


def encode(per_step: Sequence[Sequence[float]], *, seed: int, source: str, split: str = "test") -> dict[str, Any]:
    """The `per_episode` entry for `per_step[k][i]` = metric of episode i after k steps."""
    import numpy as np

    values = np.asarray(per_step, dtype="<f8")
    if values.ndim != 2:
        raise ValueError(f"per-episode values must be [steps][episodes], got shape {values.shape}")
    blob = base64.b64encode(zlib.compress(values.tobytes(order="C"), 9)).decode("ascii")
    return {"split": split, "seed": int(seed), "source": source, "count": int(values.shape[1]),
            "steps": int(values.shape[0]), "dtype": DTYPE, "encoding": ENCODING, "values": blob}


def decode(entry: Mapping[str, Any]) -> Any:
    """The [steps, count] float64 numpy array an entry holds; ValueError saying what is wrong otherwise."""
    import numpy as np

    problem = entry_problem(entry, check_values=False)
    if problem:
        raise ValueError(problem)
    try:
        raw = zlib.decompress(base64.b64decode(entry["values"], validate=True))
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise ValueError(f"per_episode.values is not zlib-compressed base64: {exc}") from None
    steps, count = entry["steps"], entry["count"]
    if len(raw) != steps * count * 8:
        raise ValueError(f"per_episode.values holds {len(raw) // 8} numbers, expected steps x count = "
                         f"{steps} x {count}")
    return np.frombuffer(raw, dtype="<f8").reshape(steps, count).copy()


def entry_problem(entry: Any, *, check_values: bool = True) -> str:
    """'' if `entry` is a readable `per_episode` entry, else what is wrong with it."""
    if not isinstance(entry, Mapping):
        return f"per_episode is a {type(entry).__name__}, expected an object"
    missing = [key for key in FIELDS if key not in entry]
    if missing:
        return f"per_episode has no {', '.join(missing)}"
    for key in ("seed", "count", "steps"):
        if not isinstance(entry[key], int) or isinstance(entry[key], bool) or entry[key] < 0:
            return f"per_episode.{key} is {entry[key]!r}, expected a non-negative integer"
    if entry["encoding"] != ENCODING or entry["dtype"] != DTYPE:
        return (f"per_episode is {entry['dtype']!r} in {entry['encoding']!r}; this harness reads {DTYPE!r} "
                f"in {ENCODING!r}")
    if not isinstance(entry["values"], str):
        return "per_episode.values is not a string"
    if check_values:
        try:
            decode(entry)
        except ValueError as exc:
            return str(exc)
    return ""


def values(record: Mapping[str, Any], step: int | None = None) -> Any:
    """A record's per-episode values: the [steps, count] array, or one step's row (`step` -1: the last);
    None when the record keeps none (records written before per-episode values, failed cells)."""
    entry = record.get("per_episode")
    if not entry:
        return None
    array = decode(entry)
    return array if step is None else array[step]


def identity(record: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What identifies a record's test episodes: two records pair episode by episode when these are equal."""
    entry = record.get("per_episode")
    if not entry:
        return None
    return (entry["split"], entry["seed"], entry["source"], entry["count"])
