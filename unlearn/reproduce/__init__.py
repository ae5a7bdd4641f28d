"""`python -m unlearn reproduce results/<table>.md|.jsonl [--rows 0,3-5] [--seeds 0] [--methods ga] [--cache DIR]`:
rerun the commands recorded for a committed table and compare every metric with the committed value.

A committed row carries its `command` (`python run.py [-m] overrides...`), its composed `config`, its `metrics`
and its `environment`. For each selected row the override of that one run is rebuilt from the command: a sweep's
values (`method=ga,rl seed=0,1,2`) are narrowed to the row's own, a config group's choice (`method=`) by the
composed config it gives that is closest to the row's, any other key's (`seed=`) from the row's config. Every
rebuilt command is checked before anything runs (`check_choices`, `compose_config`, `check_node`); a row whose
command cannot be rerun is one line, and then nothing runs. Each distinct command then runs once as
`python run.py <overrides> results_dir=<tmp> table_path=<tmp> cache_dir=<cache> save_model=false` from the
repository root (a sequence's steps come from one run), every run sharing one fresh cache (a temporary folder,
or `--cache DIR`); the recorded `results_dir`, `table_path`, `cache_dir`, `save_model`, `logger`, `stage` and
`member` and Hydra's own settings are dropped: none of them moves a number. A row run with `device=auto` is pinned
to the device type its environment records (a CPU row reruns on the CPU of a GPU machine).

Every metric of the row (and `avg_gap`), except wall-clock ones (unit seconds), is compared:
- **exact** where the harness promises determinism (docs/results.md): both runs on a CPU with the same torch
  build and thread count. The committed thread count is `environment.threads`, else (rows written before it was
  recorded) the config's `threads` where that is a number; `threads=auto`/null without a record is unknown, and
  the row is compared within tolerance.
- else **within tolerance** `max(k × std, atol, rtol × |committed|)`, std (ddof 1) over the committed rows of the
  table that differ only in their seed (`seed`, `scenario.stream_seed`): the same method and setting (and step);
  k = 3, atol = rtol = 1e-6 by default. A setting with one committed seed has no spread: its tolerance is the floor.
Each comparison is `match`, `drift` or `missing` (the metric, or the whole row, is absent from the rerun); the exit
status is 0 when all match, 1 on any drift or missing, 2 when the table or a row cannot be rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from unlearn.errors import UnlearnError
from unlearn.reproduce.compare import (ATOL, K, RTOL, STATUSES, compare, compared_metrics, exact_reason, setting,
                                       spreads, tolerance)
from unlearn.reproduce.plan import (Committed, Planner, Run, Unreproducible, config_changes, distance_of, load_table,
                                    plan, select)

__all__ = ["Committed", "Planner", "Run", "Unreproducible", "add_parser", "compare", "compared_metrics",
           "config_changes", "distance_of", "exact_reason", "load_table", "main", "plan", "reproduce", "rerun",
           "select", "spreads", "tolerance"]

ROOT = Path(__file__).resolve().parents[2]


# ---- running -----------------------------------------------------------------------------------------------
def rerun(run: Run, folder: Path, cache: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Run `python run.py <run.overrides>` into `folder` with `cache`: (its rows, None) or ([], why it failed)."""
    table = folder / "table.jsonl"
    command = [sys.executable, str(ROOT / "run.py"), *run.overrides, f"results_dir={folder}", f"table_path={table}",
               f"cache_dir={cache}", "save_model=false"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=os.environ | {"UNLEARN_CACHE": str(cache)})
    if done.returncode != 0:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:] or ["(no output)"]
        return [], f"exit {done.returncode}: {tail[0]}"
    rows = [json.loads(line) for line in table.read_text().splitlines() if line.strip()] if table.is_file() else []
    return rows, None if rows else "it wrote no row"


def _matching(rows: list[dict[str, Any]], committed: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in rows if r.get("step") == committed.get("step")), None)


def reproduce(table: str | Path, rows: str | None = None, seeds: Sequence[int] | None = None,
              methods: Sequence[str] | None = None, cache: str | Path | None = None, k: float = K,
              atol: float = ATOL, rtol: float = RTOL) -> tuple[int, str]:
    """Rerun the selected rows of `table` and compare: (exit status, the report text). Status 2 (BadInputError
    raised, or the report lists the rows that cannot be rerun) before anything runs; 1 on drift or missing.
    Progress goes to stderr."""
    import pandas as pd

    committed = load_table(table)
    chosen = select(committed, rows, seeds, methods)
    runs, problems = plan(chosen)
    if problems:
        many = len({c.source for c in committed}) > 1
        runnable = [f"{c.source}:{c.index}" if many else str(c.index) for run in runs for c in run.rows]
        hint = f"; the others can: --rows {','.join(runnable)}" if runnable else ""
        return 2, "\n".join([*problems, f"nothing was run: {len(problems)} of {len(chosen)} rows cannot be rerun{hint}"])
    spread = spreads(committed)
    notes, records = [], []
    with tempfile.TemporaryDirectory(prefix="unlearn-reproduce-") as tmp:
        store = Path(cache) if cache else Path(tmp) / "cache"
        for number, run in enumerate(runs, 1):
            shown = "python run.py " + shlex.join(run.overrides)
            print(f"run {number}/{len(runs)}: {shown} (rows {', '.join(c.label for c in run.rows)})", file=sys.stderr,
                  flush=True)
            started = time.perf_counter()
            produced, failure = rerun(run, Path(tmp) / f"run{number}", store)
            print(f"  {'failed: ' + failure if failure else 'done'} in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
            notes.append(f"- run {number}: `{shown}`" + (f" — failed ({failure})" if failure else ""))
            if run.config_changes:
                more = f" (+{len(run.config_changes) - 5} more)" if len(run.config_changes) > 5 else ""
                notes.append(f"  - config differs from the recorded one: {'; '.join(run.config_changes[:5])}{more}")
            for c in run.rows:
                again = _matching(produced, c.row)
                if again is not None:
                    reason = exact_reason(c.row, again)
                    notes.append(f"  - {c.label}: " + (f"within tolerance ({reason})" if reason else
                                                       "exact (same torch, threads and CPU)"))
                records += compare(c, again, spread[setting(c.row)], k, atol, rtol)
    frame = pd.DataFrame(records).rename(columns={"diff": "abs diff"})
    counts = frame["status"].value_counts()
    summary = ", ".join(f"{int(counts.get(s, 0))} {s}" for s in STATUSES)
    skipped = sorted({m for c in chosen for m in (c.row.get("metrics") or {})} - set(frame["metric"]))
    text = "\n".join([f"# reproduce {table}: {summary}", "", *notes, "",
                      frame.to_markdown(index=False, floatfmt=".8g"), "",
                      f"{summary} ({len(chosen)} row{'s' if len(chosen) != 1 else ''} × their metrics; exact where the same torch, threads and CPU, "
                      f"else within max({k:g} × seed std, {atol:g}, {rtol:g} × |committed|))"
                      + (f"; not compared (wall-clock): {', '.join(skipped)}" if skipped else "")])
    return (0 if counts.get("drift", 0) == 0 and counts.get("missing", 0) == 0 else 1), text + "\n"


# ---- command line ------------------------------------------------------------------------------------------
def _seeds(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `reproduce` to an argparse subparsers object (`python -m unlearn reproduce ...`)."""
    parser = subparsers.add_parser("reproduce", help="rerun a committed table's commands and compare every metric",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a committed table: results/<table>.jsonl, or a .md naming its rows files")
    parser.add_argument("--rows", help="0-based rows of the table and ranges, e.g. 0,3,5-7 (stem:N where a .md "
                                       "reads several rows files); default: every row")
    parser.add_argument("--seeds", type=_seeds, help="only rows of these seeds, e.g. 0,1")
    parser.add_argument("--methods", type=lambda text: text.split(","), help="only rows of these methods (as rows "
                                                                              "name them), e.g. retrain,ga")
    parser.add_argument("--cache", help="the cache folder the reruns share (default: a fresh temporary one)")
    parser.add_argument("--k", type=float, default=K, help="tolerance: k × the committed seeds' std (default 3)")
    parser.add_argument("--atol", type=float, default=ATOL, help="tolerance floor, absolute (default 1e-6)")
    parser.add_argument("--rtol", type=float, default=RTOL, help="tolerance floor, relative to |committed| (default 1e-6)")
    parser.set_defaults(func=main)
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run `reproduce` from parsed arguments (or an argv list): print the report; exit 0 (all match), 1 (drift or
    missing) or 2 (the table or a row cannot be rerun; one line each on stderr, nothing run)."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="python -m unlearn")
        add_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["reproduce", *(sys.argv[1:] if args is None else args)])
    try:
        status, text = reproduce(args.table, args.rows, args.seeds, args.methods, args.cache, args.k, args.atol,
                                 args.rtol)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="", file=sys.stderr if status == 2 else sys.stdout)
    return status
