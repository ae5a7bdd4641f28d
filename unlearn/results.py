"""Result rows as a pandas DataFrame, for notebooks and for `compare`.

    >>> from unlearn import results
    >>> df = results.load("outputs/default/table.jsonl")        # or a run dir, a folder, "results/*.jsonl"
    >>> df.groupby("method")[["UA", "TA", "avg_gap"]].mean()
    >>> results.from_rows(rows)                                  # the same, from row dicts in hand

`load` reads run dirs (their result.json), experiment tables (table.jsonl) and committed results/*.jsonl alike,
and returns one DataFrame row per result row: one per run, or one per step of a deletion sequence. Columns,
in this order (a column appears when some row has the field; `step` is always there):

- settings: `experiment` (the table a row belongs to: a table.jsonl's folder, another .jsonl's own name, a
  result.json's `config.experiment`), `task`, `data`, `model`; `forget`, the forget request as canonical JSON
  (builder, its configuration and any pruning: what `compare` keeps apart), with `forget.<key>` for each key of
  the request and of the per-seed outcome (`forget.size`, `forget.groups`, ...; lists become tuples) and
  `forget.prune.<key>` when the model was pruned first; `method`, `method_params.<p>` per method parameter;
  `seed`, `status` (`ok` or `diverged`), `scenario` where rows carry one, `step` (1-based, <NA> outside a
  sequence); settings columns use pandas' nullable dtypes, so integers stay integers beside missing values.
- one column per metric, under the metric's own name (`UA`, `TA`, `forget_prob`, `fd`, ..., and `RTE_s`, the
  run-time efficiency in seconds); `df.attrs["metrics"]` lists them in the rows' order, and
  `df.attrs["metrics_by_task"]` each task's own, in its rows' order.
- `gap.<m>`, the gap to the oracle of each metric in the task's Avg. Gap, and `avg_gap`.
- `ref_original.<m>` and `ref_oracle.<m>`, the reference models' metrics; `rte_relative` (RTE / oracle RTE).
- `timings.<stage>` (seconds, plus `_cached` flags), any other field a row carries, flattened with dots, then
  `run_id`, `time`, `code_version`, `schema`, `command`, `run_dir`, `source` (the file read) and `config` (the
  full composed config, as a dict).
"""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.errors import UnlearnError

#: What makes rows comparable; `compare` never mixes rows that differ in these.
SETTING = ("task", "data", "model", "forget")
_LEADING = ("experiment", *SETTING, "method", "seed", "status", "scenario", "step")
_TRAILING = ("run_id", "time", "code_version", "schema", "command", "run_dir", "source", "config")


def _files(source: str | Path) -> list[Path]:
    text = str(source)
    matches = sorted(glob.glob(text, recursive=True)) if glob.has_magic(text) else [text] if Path(text).exists() else []
    if not matches:
        raise UnlearnError(f"no results at {source}")
    files = []
    for match in map(Path, matches):
        # A folder of runs: their result.json files, else its tables (a results dir holds both; either has every row).
        files += (sorted(match.rglob("result.json")) or sorted(match.rglob("*.jsonl"))) if match.is_dir() else [match]
    return files


def load_rows(source: str | Path) -> list[dict[str, Any]]:
    """The raw result rows (dicts in the schema of unlearn/report/row.py) under `source`, each once, each with
    `source` and `experiment` added."""
    rows, seen = [], set()
    for file in _files(source):
        text = file.read_text()
        items = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" else [json.loads(text)]
        for row in items:
            key = (row.get("run_id"), row.get("step"))
            if key[0] is not None and key in seen:  # the same run read from two tables
                continue
            seen.add(key)
            experiment = (file.parent.name if file.name == "table.jsonl" else file.stem if file.suffix == ".jsonl"
                          else (row.get("config") or {}).get("experiment", file.parent.name))
            rows.append(row | {"source": str(file), "experiment": experiment})
    if not rows:
        raise UnlearnError(f"no result rows found under {source}")
    return rows


def forget_request(row: dict[str, Any]) -> dict[str, Any]:
    """The forget set as asked for: the builder and its configuration (not the per-seed outcome such as its
    size or a selection loss), plus the pruning applied first, if any."""
    config = row.get("config") or {}
    asked = config.get("forget") or {k: v for k, v in row["forget"].items() if k not in ("size", "groups")}
    request = {k: v for k, v in asked.items() if not k.startswith("_")} | {"builder": row["forget"].get("builder")}
    if config.get("prune"):
        request["prune"] = {k: v for k, v in config["prune"].items() if not k.startswith("_")} | \
            {"method": config["prune"]["_target_"].rsplit(".", 1)[-1]}
    return request


def _dotted(fields: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → dotted keys, lists → tuples (hashable, so columns can be grouped on). Per row, unlike
    pandas.json_normalize, so an integer beside a missing value is still seen as an integer (see `load`)."""
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat |= _dotted(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = tuple(value) if isinstance(value, list) else value
    return flat


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    metrics, gap, reference = row.pop("metrics", {}), row.pop("gap", {}), row.pop("reference", {})
    config = row.pop("config", None)
    request = forget_request(row | {"config": config})
    flat = {"forget": json.dumps(request, sort_keys=True)} | _dotted(row | {"forget": row.get("forget", {}) | request})
    flat |= metrics | {f"gap.{m}": v for m, v in gap.items()}
    for ref, values in reference.items():
        flat |= {f"ref_{ref}.{m}": v for m, v in values.items()}
    return flat | {"config": config}


def load(source: str | Path) -> pd.DataFrame:
    """One DataFrame row per result row under `source`: a result.json, a .jsonl table, a folder of either, or a
    glob such as "results/*.jsonl" or "outputs/**/table.jsonl". The columns are listed in this module's
    docstring. Raises UnlearnError when nothing is there."""
    return from_rows(load_rows(source))


def from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """`load`'s DataFrame of result rows already in hand (e.g. the rows a deletion stream just made)."""
    rows = list(rows)
    metrics = list(dict.fromkeys(m for row in rows for m in row.get("metrics", {})))
    records = [_flat(row) for row in rows]
    frame = pd.DataFrame(records).assign(step=None) if all("step" not in r for r in records) else pd.DataFrame(records)
    clash = [m for m in metrics if m in (*_LEADING, *_TRAILING, "avg_gap", "rte_relative")
             or m.startswith(("gap.", "ref_", "forget.", "method_params.", "timings."))]
    if clash:
        raise UnlearnError(f"metric names {clash} clash with setting columns of the results DataFrame")
    prefixed = lambda prefix: [c for c in frame if c.startswith(prefix)]  # noqa: E731
    ordered = [c for group in (["experiment", *SETTING], prefixed("forget."), ["method"], prefixed("method_params."),
                               ["seed", "status", "scenario", "step"], metrics, prefixed("gap."), ["avg_gap"],
                               prefixed("ref_"), ["rte_relative"], prefixed("timings.")) for c in group if c in frame]
    trailing = [c for c in _TRAILING if c in frame]
    frame = frame[ordered + [c for c in frame if c not in ordered and c not in trailing] + trailing]
    for column in [c for c in frame if c in ("seed", "step") or c.startswith(("forget.", "method_params."))]:
        # Nullable dtypes from the rows' own values: an integer beside a missing value stays an integer.
        values = [r.get(column) for r in records]
        dtype = "Int64" if column in ("seed", "step") else object if any(isinstance(v, tuple) for v in values) else None
        frame[column] = pd.array(values, dtype=dtype)
    frame.attrs["metrics"] = metrics
    frame.attrs["metrics_by_task"] = {task: list(dict.fromkeys(m for r in rows if r["task"] == task for m in r["metrics"]))
                                      for task in dict.fromkeys(r["task"] for r in rows)}
    return frame
