"""The `harness` command: run | list | leaderboard | show | report | merge | export | reproduce."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from harness import interrupts
from harness.errors import HarnessError, UsageError

LIST_WHAT = ("algorithms", "suites", "backends", "executors", "measurements", "grids", "plugins")
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


def _alpha(value: str) -> float:
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0 < alpha < 1:
        raise argparse.ArgumentTypeError(f"expected a significance level strictly between 0 and 1, got {value!r}")
    return alpha


def build_parser(registry: Any | None = None) -> argparse.ArgumentParser:
    statistics = argparse.ArgumentParser(add_help=False)
    group = statistics.add_argument_group("statistics of the tables")
    group.add_argument("--alpha", type=_alpha, default=0.05, metavar="A",
                       help="rows not significantly worse than the best at this level share its rank (default 0.05)")
    group.add_argument("--tie-test", choices=("t", "wilcoxon"), default="t",
                       help="the paired test that decides ties: paired t-test (default) or Wilcoxon signed-rank")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE|FILE.py|no:NAME",
                        help="load a plugin module or file (repeatable); no:NAME blocks a plugin")
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark meta-learning algorithms on task suites, reproducibly.")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{run,list,leaderboard,show,report,merge,export,reproduce}")

    run = sub.add_parser("run", parents=[common, statistics], help="run a grid of meta-train/meta-test cells")
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
                     help="other work runs on this machine meanwhile: records say their timings are not exclusive, "
                          "and leaderboards note it (other harness runs are noticed without it)")
    run.add_argument("--max-cells", type=_positive_int, metavar="N",
                     help="refuse a grid that expands to more than N cells (default: the grid's max_cells, else 100000)")
    run.add_argument("--executor", metavar="NAME",
                     help="how cells reach processes and machines: serial (default, exclusive timings), local "
                          "(worker processes on this machine), ray (a Ray cluster); default: the grid's executor")
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help="cells at once for the local and ray executors (default: one per core, or per GPU)")
    run.add_argument("--address", metavar="HOST:PORT",
                     help="the ray executor joins this Ray cluster (default: RAY_ADDRESS, else a local Ray instance)")
    if registry is not None:
        group = run.add_argument_group("plugin options")
        registry.hook.harness_addoption.call_historic(kwargs={"parser": group})

    lst = sub.add_parser("list", parents=[common], help="list registered plugins and what they provide")
    lst.add_argument("what", nargs="?", choices=LIST_WHAT, help="one kind only (default: all)")

    board = sub.add_parser("leaderboard", parents=[common, statistics], help="rebuild leaderboards from records alone")
    board.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    board.add_argument("--out", type=Path, default=Path("leaderboards"), metavar="DIR")
    board.add_argument("--format", type=_formats, default=list(FORMATS), metavar="md,csv,latex", dest="formats")
    board.add_argument("--grid", action="append", default=[], metavar="NAME|PATH.toml",
                       help="only this grid's tables (repeatable; default: every grid the records name)")

    show = sub.add_parser("show", parents=[common], help="print one record")
    show.add_argument("cell_id", metavar="CELL_ID", help="a cell id, a unique prefix of one, or a record file")
    show.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")

    report = sub.add_parser("report", parents=[common, statistics], help="write a static HTML report (works offline)")
    report.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    report.add_argument("--out", type=Path, default=Path("report"), metavar="DIR", help="site folder (default report/)")
    report.add_argument("--grid", action="append", default=[], metavar="NAME|PATH.toml",
                        help="only this grid's tables (repeatable; default: every grid the records name)")

    merge = sub.add_parser("merge", parents=[common], help="merge result stores from several machines into one")
    merge.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="results folders to merge from")
    merge.add_argument("--into", type=Path, required=True, metavar="DIR", help="the store that receives the records")
    merge.add_argument("--dry-run", action="store_true", help="report what would be copied and every conflict")

    export = sub.add_parser("export", parents=[common], help="the whole store as one table (parquet or CSV)")
    export.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    export.add_argument("--format", choices=("parquet", "csv"), default="csv", dest="export_format")
    export.add_argument("--out", type=Path, metavar="FILE", help="default: results.<format> (episodes.<format>)")
    export.add_argument("--per-episode", action="store_true",
                        help="one row per test episode and step instead of one per record")

    reproduce = sub.add_parser("reproduce", parents=[common], help="re-run one cell from its record and compare")
    reproduce.add_argument("cell_id", metavar="CELL_ID", help="a cell id, a unique prefix of one, or a record file")
    reproduce.add_argument("--results", type=Path, default=Path("results"), metavar="DIR")
    reproduce.add_argument("--tolerance", type=float, metavar="REL",
                           help="relative tolerance on the metric on another machine (default: exact on the same CPU "
                                "model and thread count, else 1e-3)")
    reproduce.add_argument("--in-process", action="store_true", help="run the cell in this process (debugging)")
    return parser


def _err(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # after a hang-up the terminal is gone
        print(line, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `harness` console script; returns the exit code."""
    called = argv is not None  # by a program (or a test), not as the `harness` command
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = interrupts.install()
    try:
        from harness.registry import build_plugin_manager

        registry = build_plugin_manager(_pre_scan_plugins(argv))
        args = build_parser(registry).parse_args(argv)
        registry.hook.harness_configure.call_historic(
            kwargs={"config": SimpleNamespace(options=args, registry=registry)})
        interrupts.checkpoint()
        return COMMANDS[args.command](args, registry)
    except HarnessError as exc:
        _err(f"harness: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("harness: interrupted; records of finished cells are kept")
        return 128 + signal.SIGINT
    except interrupts.Interrupted as exc:
        _err(f"harness: interrupted by {signal.Signals(exc.signum).name}; records of finished cells are kept")
        return 128 + exc.signum
    finally:
        interrupts.close(previous, exiting=not called)


def cmd_run(args: argparse.Namespace, registry: Any) -> int:
    from harness.grid import load_grid

    grid = load_grid(args.grid, registry, algorithms=args.algorithm, suites=args.suite,
                     backends=args.backend, seeds=args.seeds, max_cells=args.max_cells)
    # Only now the heavier modules (pandas for the tables): a mistake in the grid is reported at once.
    from harness.executors import ExecutorOptions, build_executor
    from harness.files import prepare_output_dirs, remove_stale_temp_files
    from harness.publish import grid_tables
    from harness.render import render_terminal, write_tables
    from harness.results import ResultStore
    from harness.session import plan, run_grid

    executor = build_executor(registry, args.executor or grid.executor,
                              ExecutorOptions(workers=args.workers, address=args.address, in_process=args.in_process))
    store = ResultStore(args.results)
    if args.dry_run:
        planned = plan(grid, registry, store, force=args.force)
        print(f"grid {grid.name!r} ({grid.source}): {len(planned)} cells to consider, {len(grid.skipped)} skipped")
        for item in planned:
            mark = "done (has record; --force re-runs)" if item.completed else "will run"
            print(f"  {item.cell.id}  [{mark}]")
        for skipped in grid.skipped:
            print(f"  {skipped.cell.id}  [{skipped.status}: {skipped.reason}]")
        for problem in store.problems:
            _err(f"harness: warning: {problem}")
        return 0
    if not grid.cells and not grid.skipped:
        raise UsageError(f"grid {grid.name!r} has no cells after filtering")
    prepare_output_dirs([(args.results, "--results folder"), (args.leaderboards, "--leaderboards folder")])
    remove_stale_temp_files([args.leaderboards])  # the results folder's are the session's to sweep
    outcome = run_grid(grid, registry, store, force=args.force, in_process=args.in_process,
                       progress=False if args.no_progress else None, exclusive=not args.shared_machine,
                       executor=executor, keep_grid=(grid.name, Path(grid.source).read_text(encoding="utf-8")))
    interrupts.checkpoint()
    # The whole grid's tables, whatever the filters.
    tables, warnings = grid_tables([args.grid], registry, store, alpha=args.alpha, test=args.tie_test)
    for warning in warnings:
        _err(f"harness: warning: {warning}")
    written = write_tables(tables, args.leaderboards, args.formats)
    print(render_terminal(tables))
    others = f", {outcome.by_others} run by other harness processes" if outcome.by_others else ""
    print(f"\n{outcome.ran} cells run, {outcome.reused} reused from {args.results}/{others}, "
          f"{len(grid.skipped)} skipped; {len(written)} leaderboard files in {args.leaderboards}/")
    for record in outcome.failed:
        _err(f"  {record['status'].upper()}: {record['cell_id']}: {record['reason']}")
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
    if "executors" in what:
        rows = [(n, origin(r.plugin), avail(r), r.spec.description) for n, r in sorted(registry.executors.items())]
        sections.append(("executors", ["name", "plugin (origin)", "availability", "description"], rows))
    if "measurements" in what and hasattr(registry, "measurements"):
        rows = [(n, origin(r.plugin), avail(r), r.spec.description) for n, r in sorted(registry.measurements.items())]
        sections.append(("measurements", ["name", "plugin (origin)", "availability", "description"], rows))
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
    from harness.files import check_output_dir, remove_stale_temp_files
    from harness.publish import grid_tables
    from harness.render import render_terminal, write_tables
    from harness.results import ResultStore

    if not args.results.is_dir():
        raise UsageError(f"results directory {args.results} does not exist (run `harness run` first or pass --results DIR)")
    check_output_dir(args.out, "--out folder")
    store = ResultStore(args.results)
    tables, warnings = grid_tables(args.grid, registry, store, alpha=args.alpha, test=args.tie_test)
    for line in [*store.problems, *warnings]:
        _err(f"harness: warning: {line}")
    if not tables:
        raise UsageError(f"no readable records in {args.results}")
    remove_stale_temp_files([args.out])
    written = write_tables(tables, args.out, args.formats)
    print(render_terminal(tables))
    print(f"\n{len(written)} files written under {args.out}/")
    return 0


def cmd_show(args: argparse.Namespace, registry: Any) -> int:
    from harness.results import ResultStore
    from harness.show import format_record

    store = ResultStore(args.results)
    record = store.find(args.cell_id)
    for problem in store.problems:
        _err(f"harness: warning: {problem}")
    print(format_record(record))
    return 0


def _delegate(target: str) -> Any:
    """A command implemented in another core module, imported only when it runs (`harness list` stays instant)."""

    def command(args: argparse.Namespace, registry: Any) -> int:
        import importlib

        module, _, name = target.partition(":")
        return int(getattr(importlib.import_module(module), name)(args, registry))

    return command


COMMANDS = {"run": cmd_run, "list": cmd_list, "leaderboard": cmd_leaderboard, "show": cmd_show,
            "report": _delegate("harness.report:cli_report"), "merge": _delegate("harness.merge:cli_merge"),
            "export": _delegate("harness.export:cli_export"),
            "reproduce": _delegate("harness.reproduce:cli_reproduce")}


if __name__ == "__main__":
    raise SystemExit(main())
