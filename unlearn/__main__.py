"""`python -m unlearn compare PATH [--format md|csv|latex] [--by COLUMN] [--metrics a,b] [--out FILE]
[--plot PNG] [--html PAGE]`"""
from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from unlearn.errors import UnlearnError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearn", description="unlearn harness utilities")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="turn result rows into a methods × metrics table")
    cmp.add_argument("path", help="a table.jsonl, a result.json, a folder of runs, or a quoted glob ('results/*.jsonl')")
    cmp.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    cmp.add_argument("--by", default="method", help="column to group by, e.g. method or method_params.lr")
    cmp.add_argument("--out", help="write the table here as well as printing it")
    cmp.add_argument("--plot", help="forgetting-utility plot (PNG); default: beside --out, else beside PATH")
    cmp.add_argument("--metrics", help="comma-separated columns after the gap metrics, e.g. klom_forget,klom_test "
                                       "(default: kl_forget, klom_forget, lira_auc, eps_score where present)")
    cmp.add_argument("--html", help="one self-contained HTML page per experiment: tables, plots, per-step curves, "
                                    "generations (NAME.html; NAME-EXPERIMENT.html when PATH holds several)")
    args = parser.parse_args(argv)

    from unlearn.report import html
    from unlearn.report.compare import EXTRA_METRICS, compare
    from unlearn.results import load

    source = Path(args.path)
    beside = source if source.is_dir() else Path(".") if glob.has_magic(args.path) else source.parent
    plot_path = Path(args.plot) if args.plot else Path(args.out).with_suffix(".png") if args.out else beside / "compare.png"
    metrics = args.metrics.split(",") if args.metrics else None
    try:
        frame = load(args.path)
        text = compare(frame, fmt=args.format, by=args.by, plot_path=plot_path, metrics=metrics)
        pages = html.write(frame, Path(args.html), args.by, metrics or EXTRA_METRICS) if args.html else []
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    print(f"plot: {plot_path}", file=sys.stderr)
    for page in pages:
        print(f"html: {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
