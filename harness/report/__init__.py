"""`harness report`: a static HTML site of a results store that works offline (no network, no server):
an index of grids, each leaderboard as a sortable table with its plots, and a page per cell."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from harness.errors import UsageError

__all__ = ["cli_report", "write_report"]


def _check_folders(results: Path, out: Path) -> None:
    from harness.files import check_output_dir

    if not results.is_dir():
        what = "is not a folder" if results.exists() else "does not exist"
        raise UsageError(
            f"results directory {results} {what} (run `harness run` first or pass --results DIR)"
        )
    check_output_dir(out, "--out folder")
    resolved_out, resolved_results = out.resolve(), results.resolve()
    if resolved_out == resolved_results or resolved_results in resolved_out.parents:
        raise UsageError(
            f"--out folder {out} is inside the results directory {results}; give a folder of its own "
            "(default report/)"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "index.html").is_file():
        from harness.report.site import MANIFEST

        if not (out / MANIFEST).is_file():
            raise UsageError(
                f"--out folder {out} holds files that are not a harness report; give an empty or new "
                "folder, or the folder of an earlier report"
            )


def write_report(
    results: Path, out: Path, registry: Any, grids: list[str] | None = None, **statistics: Any
) -> tuple[list[Path], list[str]]:
    """Write the report of store `results` under `out` (only the grids named in `grids`, else all; the
    tables' `statistics`, `alpha` and `test`, as `harness.publish.grid_tables` takes them); return the
    files written and the warnings (unreadable records, grids that cannot be expanded)."""
    from harness.files import remove_stale_temp_files
    from harness.report.data import gather
    from harness.report.site import build, write
    from harness.results import ResultStore

    _check_folders(Path(results), Path(out))
    data = gather(list(grids or []), registry, ResultStore(results), **statistics)
    if not data.grids:
        raise UsageError(f"no readable records in {results}")
    site = build(data, Path(results).resolve().name)
    remove_stale_temp_files([Path(out)])
    return write(site, Path(out)), data.warnings


def cli_report(args: argparse.Namespace, registry: Any) -> int:
    """`harness report [--results DIR] [--out DIR] [--grid NAME|PATH.toml ...] [--alpha A] [--tie-test T]`:
    write the site, print where it is and how big; exit 0, or raise UsageError for bad input before
    writing anything."""
    # The options `harness leaderboard` has too (`--alpha`, `--tie-test`): the same tables, the same ties.
    statistics = {
        key: getattr(args, name)
        for key, name in (("alpha", "alpha"), ("test", "tie_test"))
        if getattr(args, name, None) is not None
    }
    written, warnings = write_report(args.results, args.out, registry, args.grid, **statistics)
    for line in warnings:
        print(f"harness: warning: {line}", file=sys.stderr)
    pages = sum(1 for p in written if p.suffix == ".html")
    images = sum(1 for p in written if p.suffix == ".svg")
    size = sum(os.path.getsize(p) for p in written)
    print(
        f"report: {pages} pages and {images} figures ({size / 2**20:.1f} MiB) written under {args.out}/; "
        f"open {Path(args.out) / 'index.html'} in a browser"
    )
    return 0
