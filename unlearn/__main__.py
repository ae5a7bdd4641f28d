"""`python -m unlearn compare PATH [--format md|csv|latex] [--by COLUMN] [--metrics a,b] [--out FILE]
[--plot PNG] [--html PAGE]` and `python -m unlearn steps PATH [--metrics a,b] [--by param,param] [--format ...]
[--out FILE] [--plot PNG]` (a deletion stream's methods × steps table and curves), and `python -m unlearn
reproduce TABLE [--rows ...] [--seeds ...]` (rerun a committed table's commands and compare every metric), and
the other tools of SUBCOMMANDS (`export`/`verify` release bundles, `leaderboard`)."""
from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import sys
from pathlib import Path

from unlearn.errors import UnlearnError

# Modules each giving `add_parser(subparsers)`, whose parser sets `func` (parsed args -> exit status).
SUBCOMMANDS = ("unlearn.reproduce", "unlearn.bundle", "unlearn.leaderboard", "unlearn.tune")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearn", description="unlearn harness utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="turn result rows into a methods × metrics table")
    cmp.add_argument("path", help="a table.jsonl, a result.json, a folder of runs, or a quoted glob ('results/*.jsonl')")
    cmp.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    cmp.add_argument("--by", default="method", help="column to group by, e.g. method or method_params.lr")
    cmp.add_argument("--out", help="write the table here as well as printing it")
    cmp.add_argument("--plot", help="forgetting-utility plot (PNG); default: beside --out, else beside PATH's table")
    cmp.add_argument("--metrics", help="comma-separated columns after the gap metrics, e.g. klom_forget,klom_test "
                                       "(default: kl_forget, klom_forget, lira_auc, eps_score where present)")
    cmp.add_argument("--html", help="one self-contained HTML page per experiment: tables, plots, per-step curves, "
                                    "generations (NAME.html; NAME-EXPERIMENT.html when PATH holds several); a bare "
                                    "name goes beside PATH's table, like the plot")
    steps = sub.add_parser("steps", help="a deletion stream's rows as methods × steps tables and curves")
    steps.add_argument("path", help="a table.jsonl of scenario=sequence rows")
    steps.add_argument("--metrics", help="comma-separated columns (default: the gap metrics and the stream's own)")
    steps.add_argument("--by", help="method parameters that tell configurations apart, e.g. budget,orders")
    steps.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    steps.add_argument("--out", help="write the table here as well as printing it")
    steps.add_argument("--plot", help="per-step curves (PNG)")
    for name in SUBCOMMANDS:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "steps":
        return _steps(args)
    if hasattr(args, "func"):
        return args.func(args)

    from unlearn.report import html
    from unlearn.report.compare import EXTRA_METRICS, compare
    from unlearn.results import load

    beside = _beside(args.path)
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png") if args.out else beside / "compare.png"
    html_path = None if not args.html else beside / args.html if _bare(args.html) else Path(args.html)
    metrics = args.metrics.split(",") if args.metrics else None
    pages: list = []

    def make() -> str:
        frame = load(args.path)
        text = compare(frame, fmt=args.format, by=args.by, plot_path=plot_path, metrics=metrics)
        pages.extend(html.write(frame, html_path, args.by, metrics or EXTRA_METRICS) if html_path else [])
        return text

    status = _emit(make, args.out)
    if status == 0:
        print(f"plot: {plot_path}", file=sys.stderr)
        for page in pages:
            print(f"html: {page}", file=sys.stderr)
    return status


def _beside(path: str) -> Path:
    """Where compare's files go unless told: the folder PATH names, else the folder of the table it names, else
    (a glob) the folder before the glob's first wildcard ('results/*.jsonl' → results)."""
    if glob.has_magic(path):
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        return Path(*parts[:fixed]) if fixed else Path(".")
    source = Path(path)
    return source if source.is_dir() else source.parent


def _bare(name: str) -> bool:
    """A file name without any folder ('r.html', not './r.html' or 'out/r.html'): it goes beside the table."""
    return Path(name).name == name and not Path(name).is_absolute()


def _steps(args) -> int:
    from unlearn.report import plots
    from unlearn.report.compare import steps_table, stream_tables
    from unlearn.results import load_rows

    metrics = args.metrics.split(",") if args.metrics else None
    by = args.by.split(",") if args.by else ()

    def make() -> str:
        rows = [r for r in load_rows(args.path) if r.get("step") is not None]
        if args.plot:
            plots.steps(stream_tables(rows, metrics, by), Path(args.plot))
        return steps_table(rows, metrics, args.format, by)

    return _emit(make, args.out)


def _emit(make, out: str | None) -> int:
    """Print what `make()` returns (and write it to `out`); a harness error is one line on stderr, exit 2."""
    try:
        text = make()
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if out:
        Path(out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
