"""`python -m unlearn leaderboard PATH [--format md|csv] [--out FILE] [--html PAGE]`: rank the methods of every
setting (task, data, model, forget request, scenario) by Avg. Gap with its 95% t-interval over seeds, beside the
Original and Retrain reference lines, with RTE and, where attacks ran, robustness columns.

PATH is anything `unlearn.results.load` reads: a folder (`results/`), a table.jsonl, a run's result.json or a
quoted glob. The board prints as Markdown (or CSV); `--out FILE` writes that text too, `--html PAGE` a
self-contained page (a section per setting, a table of contents). Input with no rows, or no row with an Avg. Gap,
is one line on stderr, exit 2, and nothing written. The statistics and the rank rule: `unlearn.leaderboard.board`;
how to read a board: docs/leaderboard.md.

    >>> from unlearn import results, leaderboard
    >>> found, unranked = leaderboard.boards(results.load("results/"))
    >>> found[0].entries[["rank", "mean", "low", "high"]]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from unlearn.errors import UnlearnError
from unlearn.leaderboard.board import Board, boards, interval, rank  # noqa: F401  (the API, importable from here)

FORMATS = ("md", "csv")


def command_line(args: argparse.Namespace) -> str:
    """The command that makes this board again, options in a fixed order (so a committed board names it exactly)."""
    words = ["python", "-m", "unlearn", "leaderboard", args.path]
    if args.format != "md":
        words += ["--format", args.format]
    words += [w for option, value in (("--out", args.out), ("--html", args.html)) if value for w in (option, value)]
    return shlex.join(words)


def make(path: str, fmt: str = "md", command: str | None = None, html: bool = False) -> tuple[str, str | None]:
    """The board of the rows under `path` as text in `fmt`, and (when `html`) its page. Raises UnlearnError for
    input that cannot be ranked, before anything is written."""
    from unlearn.leaderboard import render
    from unlearn.results import load

    if fmt not in FORMATS:
        raise UnlearnError(f"--format {fmt!r} is not one of {FORMATS}")
    found, unranked = boards(load(path))
    text = render.markdown(found, unranked, command) if fmt == "md" else render.csv(found)
    return text, render.page(found, unranked, command) if html else None


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run `leaderboard` from parsed arguments (or an argv list): print the board, write --out and --html; exit 0,
    or 2 with one line on stderr (and nothing written) for input that cannot be ranked."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="python -m unlearn")
        add_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["leaderboard", *(sys.argv[1:] if args is None else args)])
    try:
        text, page = make(args.path, args.format, command_line(args), html=bool(args.html))
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    for target, content in ((args.out, text), (args.html, page)):
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            Path(target).write_text(content, encoding="utf-8")
    if args.html:
        print(f"html: {args.html}", file=sys.stderr)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `leaderboard` to an argparse subparsers object (`python -m unlearn leaderboard ...`)."""
    parser = subparsers.add_parser("leaderboard", help="rank methods per setting by Avg. Gap with its interval",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a folder of results (results/), a table.jsonl, a result.json or a quoted glob")
    parser.add_argument("--format", choices=FORMATS, default="md", help="printed and --out text (default md)")
    parser.add_argument("--out", help="write the printed text here too")
    parser.add_argument("--html", help="a self-contained HTML page of the boards (a section per setting)")
    parser.set_defaults(func=main)
    return parser
