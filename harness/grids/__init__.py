"""The grids that ship with the harness (smoke, default, full), registered like any plugin's grids."""

from __future__ import annotations

from pathlib import Path

import pluggy

hookimpl = pluggy.HookimplMarker("harness")

GRID_DIR = Path(__file__).parent


@hookimpl
def harness_register_grids() -> dict[str, str]:
    return {path.stem: str(path) for path in sorted(GRID_DIR.glob("*.toml"))}
