"""Release bundles: `python -m unlearn export <run dir | table> <out>` and `python -m unlearn verify <bundle>`.

A bundle is a folder another researcher can check and build on without retraining anything (docs/bundles.md):

    manifest.json                    every other file with its SHA-256 and size; the harness version, a SHA-256 of
                                     its source, the exporting environment; the runs
    rows.jsonl                       the result rows, one per run (as `compare` and `results.load` read them)
    environment.json                 the exporting environment and every installed package's version
    runs/<n>/run.json                the run: its row, command, the identities of its original and oracle, where
                                     each model's weights are, the evaluation code's digest, the export's metrics
    runs/<n>/config.json             the resolved config of the run
    runs/<n>/forget_indices.json     the request: train indices (and test indices), as forget=from_file reads them
    runs/<n>/unlearned.safetensors   the unlearned weights (only the tensors that differ from a published original)
    models/<identity>.safetensors    the originals and oracles, once each (a published one is named, not held)

Weights are plain safetensors files keyed by state-dict name, everything else JSON: nothing in a bundle is
unpickled or imported when it is read. `verify` exits 0 when every re-evaluated metric matches, 1 on drift, 2 when
the bundle is at fault (a missing, altered or unlisted file; a file that is not what it claims): one line each.
`export` exits 2 on bad input (a row without a recorded command, say) and 1 when a run's weights do not give its
row's metrics; either way nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from unlearn.errors import UnlearnError

__all__ = ["BadBundle", "Bundle", "ExportRefused", "OpenRun", "add_parser", "export", "main_export", "main_verify",
           "verify"]
# Imported when first used: `python -m unlearn compare` lists these commands without loading the pipeline.
_LAZY = {"BadBundle": "files", "Bundle": "read", "OpenRun": "read", "verify": "read", "ExportRefused": "write",
         "export": "write"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


def add_parser(subparsers: Any) -> None:
    """Add `export` and `verify` to an argparse subparsers object (`python -m unlearn export|verify ...`)."""
    out = subparsers.add_parser("export", help="write a release bundle of a run dir or a table's rows",
                                description="Write a self-contained, verifiable release bundle (docs/bundles.md).")
    out.add_argument("source", help="a run dir (holding result.json) or a table (.jsonl, or a .md naming its rows)")
    out.add_argument("out", help="the bundle folder to create (must not exist)")
    out.add_argument("--rows", help="0-based rows of the table and ranges, e.g. 0,3,5-7 (default: every row)")
    out.add_argument("--cache", help="the cache holding the runs' originals and oracles (default: each row's "
                                     "cache_dir where it exists, else $UNLEARN_CACHE or ~/.cache/unlearn)")
    out.set_defaults(func=main_export)
    check = subparsers.add_parser("verify", help="check a bundle's files and re-evaluate its models",
                                  description="Check a bundle's manifest and re-evaluate its models against its rows.")
    check.add_argument("bundle", help="a folder written by `python -m unlearn export`")
    check.add_argument("--cache", help="a cache folder for what evaluation builds (default: a temporary one)")
    check.add_argument("--original", help="your copy of the published original the bundle names (default: the "
                                          "exporter's path)")
    check.add_argument("--oracle", help="your copy of the published oracle the bundle names")
    check.set_defaults(func=main_verify)


def _parsed(command: str, args: argparse.Namespace | Sequence[str] | None) -> argparse.Namespace:
    if isinstance(args, argparse.Namespace):
        return args
    parser = argparse.ArgumentParser(prog="python -m unlearn")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([command, *(sys.argv[1:] if args is None else args)])


def main_export(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """`export` from parsed arguments (or an argv list): 0 written, 1 refused (weights that do not give their row),
    2 bad input; refusals are one line each on stderr."""
    from unlearn.bundle.write import ExportRefused, export

    args = _parsed("export", args)
    try:
        print(export(args.source, args.out, args.rows, args.cache))
    except ExportRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main_verify(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """`verify` from parsed arguments (or an argv list): print the report; 0 all match, 1 drift, 2 a bad bundle."""
    from unlearn.bundle.read import verify

    args = _parsed("verify", args)
    paths = {role: getattr(args, role) for role in ("original", "oracle") if getattr(args, role)}
    try:
        status, text = verify(args.bundle, args.cache, paths)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    return status
