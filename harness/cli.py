"""The `harness` command: run | list | leaderboard | show."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness.errors import HarnessError, UsageError

LIST_WHAT = ("algorithms", "suites", "backends", "grids", "plugins")
FORMATS = ("md", "csv", "latex")


def _pre_scan_plugins(argv: Sequence[str]) -> list[str]:
    """The -p values, found before full parsing so plugins can add options (like pytest)."""
    found, it = [], iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg in ("-p", "--plugin") and i + 1 < len(argv):
            found.append(argv[i + 1])
            next(it, None)
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-p") and len(arg) > 2:
            found.append(arg[2:].lstrip("="))
    return found


def _formats(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in chosen if v not in FORMATS]
    if bad or not chosen:
        raise argparse.ArgumentTypeError(f"unknown format {', '.join(bad) or value!r}; valid: {', '.join(FORMATS)}")
    return chosen


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def build_parser(registry: Any | None = None) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE|FILE.py|no:NAME",
                        help="load a plugin module or file (repeatable); no:NAME blocks a plugin")
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark meta-learning algorithms on task suites, reproducibly.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,leaderboard,show}")

    run = sub.add_parser("run", parents=[common], help="run a grid of meta-train/meta-test cells")
    run.add_argument("--grid", default="default", help="smoke | default | full | another registered grid | PATH.toml")
    run.add_argument("--algorithm", action="append", default=[], metavar="NAME", help="only this algorithm (repeatable); one the grid does not name runs with its defaults on the grid's suites")
    run.add_argument("--suite", action="append", default=[], metavar="NAME", help="only this suite (repeatable); one the grid does not name runs with its default configuration")
    run.add_argument("--backend", action="append", default=[], metavar="NAME|auto",
                     help="run on these backends instead of the grid's (repeatable)")
    run.add_argument("--seeds", type=_positive_int, metavar="N", help="use seeds 0..N-1 instead of the grid's")
    run.add_argument("--results", type=Path, default=Path("results"), metavar="DIR", help="results store (default results/)")
    run.add_argument("--leaderboards", type=Path, default=Path("leaderboards"), metavar="DIR",
                     help="where tables are written (default leaderboards/)")
    run.add_argument("--format", type=_formats, default=list(FORMATS), metavar="md,csv,latex", dest="formats")
    run.add_argument("--dry-run", action="store_true", help="list the cells and which already have a record; run nothing")
    run.add_argument("--force", action="store_true", help="re-run cells that already have a completed record")
    run.add_argument("--in-process", action="store_true",
                     help="run cells in this process (for debugging: no hard timeout, memory less clean)")
    run.add_argument("--no-progress", action="store_true", help="one line per cell instead of a progress bar")
    run.add_argument("--shared-machine", action="store_true",
                     help="other work runs on this machine meanwhile (e.g. two grids at once): records say their "
                          "timings are not exclusive, and leaderboards note it")
    if registry is not None:
        group = run.add_argument_group("plugin options")
        registry.hook.harness_addoption.call_historic(kwargs={"parser": group})

    lst = sub.add_parser("list", parents=[common], help="list registered plugins and what they provide")
    lst.add_argument("what", nargs="?", choices=LIST_WHAT, help="one kind only (default: all)")

    board = sub.add_parser("leaderboard", parents=[common], help="rebuild leaderboards from records alone")
    board.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    board.add_argument("--out", type=Path, default=Path("leaderboards"), metavar="DIR")
    board.add_argument("--format", type=_formats, default=list(FORMATS), metavar="md,csv,latex", dest="formats")
    board.add_argument("--grid", action="append", default=[], metavar="NAME", help="only records of this grid")

    show = sub.add_parser("show", parents=[common], help="print one record")
    show.add_argument("cell_id", metavar="CELL_ID", help="a cell id, a unique prefix of one, or a record file")
    show.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from harness.registry import build_plugin_manager

        registry = build_plugin_manager(_pre_scan_plugins(argv))
        args = build_parser(registry).parse_args(argv)
        registry.hook.harness_configure.call_historic(
            kwargs={"config": SimpleNamespace(options=args, registry=registry)})
        return COMMANDS[args.command](args, registry)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; records of finished cells are kept", file=sys.stderr)
        return 130


def cmd_run(args: argparse.Namespace, registry: Any) -> int:
    from harness.grid import load_grid
    from harness.leaderboard import build_tables, render_terminal, write_leaderboards
    from harness.results import ResultStore
    from harness.session import plan, run_grid

    grid = load_grid(args.grid, registry, algorithms=args.algorithm, suites=args.suite,
                     backends=args.backend, seeds=args.seeds)
    store = ResultStore(args.results)
    if args.dry_run:
        planned = plan(grid, registry, store, force=args.force)
        print(f"grid {grid.name!r} ({grid.source}): {len(planned)} cells to consider, {len(grid.skipped)} skipped")
        for item in planned:
            mark = "done (has record; --force re-runs)" if item.completed else "will run"
            print(f"  {item.cell.id}  [{mark}]")
        for skipped in grid.skipped:
            print(f"  {skipped.cell.id}  [{skipped.status}: {skipped.reason}]")
        return 0
    if not grid.cells and not grid.skipped:
        raise UsageError(f"grid {grid.name!r} has no cells after filtering")
    outcome = run_grid(grid, registry, store, force=args.force, in_process=args.in_process,
                       progress=False if args.no_progress else None, exclusive=not args.shared_machine)
    written = write_leaderboards(outcome.records, args.leaderboards, formats=args.formats)
    print(render_terminal(build_tables(outcome.records)))
    print(f"\n{outcome.ran} cells run, {outcome.reused} reused from {args.results}/, "
          f"{len(grid.skipped)} skipped; {len(written)} leaderboard files in {args.leaderboards}/")
    for record in outcome.failed:
        print(f"  {record['status'].upper()}: {record['cell_id']}: {record['reason']}", file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_list(args: argparse.Namespace, registry: Any) -> int:
    from tabulate import tabulate

    from harness.grid import read_grid_file

    def avail(reg: Any) -> str:
        return "available" if reg.available else f"unavailable ({reg.reason})"

    def origin(plugin: str) -> str:
        info = registry.infos.get(plugin)
        return f"{plugin} ({info.origin})" if info else plugin

    sections = []
    what = [args.what] if args.what else list(LIST_WHAT)
    if "algorithms" in what:
        rows = [(n, "/".join(sorted(r.spec.task_kinds)), origin(r.plugin), avail(r), r.spec.description)
                for n, r in sorted(registry.algorithms.items())]
        sections.append(("algorithms", ["name", "tasks", "plugin (origin)", "availability", "description"], rows))
    if "suites" in what:
        rows = [(n, r.spec.task_kind, origin(r.plugin), avail(r), r.spec.description)
                for n, r in sorted(registry.suites.items())]
        sections.append(("suites", ["name", "task", "plugin (origin)", "availability", "description"], rows))
    if "backends" in what:
        auto = registry.auto_backend()
        rows = [(n + (" (auto)" if n == auto else ""), origin(r.plugin), f"{n}: {avail(r)}", r.spec.description)
                for n, r in sorted(registry.backends.items(), key=lambda kv: -kv[1].spec.priority)]
        sections.append(("backends", ["name", "plugin (origin)", "availability", "description"], rows))
    if "grids" in what:
        rows = []
        for n, r in sorted(registry.grids.items()):
            try:
                description = str(read_grid_file(Path(r.spec))[0].get("description", ""))
            except HarnessError as exc:
                description = f"unreadable: {exc}"
            rows.append((n, origin(r.plugin), description))
        sections.append(("grids", ["name", "plugin (origin)", "description"], rows))
    if "plugins" in what:
        rows = [(i.name, i.origin, i.status + (f": {i.error}" if i.error else ""), i.version, ", ".join(i.provides),
                 i.target) for i in registry.infos.values()]
        sections.append(("plugins", ["name", "origin", "status", "version", "provides", "module"], rows))
    for title, headers, rows in sections:
        print(f"{title}:")
        print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=[None] * (len(headers) - 1) + [70]))
        print()
    return 0


def cmd_leaderboard(args: argparse.Namespace, registry: Any) -> int:
    from harness.leaderboard import build_tables, render_terminal, write_leaderboards
    from harness.results import ResultStore

    store = ResultStore(args.results)
    if not args.results.is_dir():
        raise UsageError(f"results directory {args.results} does not exist (run `harness run` first or pass --results DIR)")
    records = list(store.iter_records())
    if args.grid:
        records = [r for r in records if r.get("cell", {}).get("grid") in args.grid]
    if not records:
        raise UsageError(f"no records found in {args.results}" + (f" for grid(s) {', '.join(args.grid)}" if args.grid else ""))
    for problem in store.problems:
        print(f"harness: warning: {problem}", file=sys.stderr)
    written = write_leaderboards(records, args.out, formats=args.formats)
    print(render_terminal(build_tables(records)))
    print(f"\n{len(written)} files written under {args.out}/")
    return 0


def cmd_show(args: argparse.Namespace, registry: Any) -> int:
    from harness.results import ResultStore
    from harness.show import format_record

    print(format_record(ResultStore(args.results).find(args.cell_id)))
    return 0


COMMANDS = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "show": cmd_show}


if __name__ == "__main__":
    raise SystemExit(main())
