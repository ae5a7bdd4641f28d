"""Comparing a rerun row with the committed one: exact where the harness promises determinism, else within a
tolerance from the committed seeds' spread (see `unlearn.reproduce`)."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from unlearn.reproduce.plan import DROPPED, Committed

#: Keys the committed rows of one setting differ in: their spread is the seeds' spread.
SEED_KEYS = ("seed", "scenario.stream_seed")
K, ATOL, RTOL = 3.0, 1e-6, 1e-6
STATUSES = ("match", "drift", "missing")


def tolerance(seed_values: Sequence[float], committed: float, k: float = K, atol: float = ATOL,
              rtol: float = RTOL) -> float:
    """max(k × std over `seed_values` (ddof 1; 0 with fewer than 2 finite values), atol, rtol × |committed|):
    how far a rerun on another torch build or thread count may land from `committed` (same units)."""
    finite = np.asarray([v for v in seed_values if v is not None and math.isfinite(v)], dtype=float)
    spread = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    scale = abs(committed) if committed is not None and math.isfinite(committed) else 0.0
    return max(k * spread, atol, rtol * scale)


def exact_reason(committed: dict[str, Any], reproduced: dict[str, Any]) -> str | None:
    """None where the harness promises the same numbers for the two rows (both on a CPU, same torch build, thread
    count and CPU kind where the committed row records one), else why not (shown beside the row; its metrics are then compared within tolerance)."""
    old, new = committed.get("environment") or {}, reproduced.get("environment") or {}
    if not old:
        return "the committed row records no environment"
    devices = {str(env.get("device", "")).split(":")[0] for env in (old, new)}
    if devices != {"cpu"}:
        return f"device {old.get('device')} → {new.get('device')}: only CPU runs are promised to be bit-identical"
    if old.get("torch") != new.get("torch"):
        return f"torch {old.get('torch')} → {new.get('torch')}"
    threads = old.get("threads")
    if threads is None:
        configured = (committed.get("config") or {}).get("threads")
        threads = configured if isinstance(configured, int) and not isinstance(configured, bool) else None
    if threads is None:
        return "the committed row records no thread count (environment.threads, or a numeric threads= in its config)"
    if threads != new.get("threads"):
        return f"threads {threads} → {new.get('threads')}"
    if old.get("cpu_kind") is not None and old["cpu_kind"] != new.get("cpu_kind"):
        return f"CPU {old['cpu_kind']} → {new.get('cpu_kind')}"
    return None


def setting(row: dict[str, Any]) -> str:
    """What the rows of one method/setting share: the config without the seeds and where it wrote, and the step."""
    config = json.loads(json.dumps(row.get("config") or {}))
    for key in (*SEED_KEYS, *DROPPED, "experiment"):
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in parent.split(".") if parent else ():
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return json.dumps([config, row.get("step")], sort_keys=True, default=str)


def compared_metrics(row: dict[str, Any]) -> list[str]:
    """The row's metrics that a rerun must give again, and `avg_gap`: all but wall-clock ones (unit seconds)."""
    from unlearn.report.tables import SECONDS, unit

    return [m for m in row.get("metrics") or {} if unit(m, row.get("task")) != SECONDS] + ["avg_gap"]


def _value(row: dict[str, Any] | None, metric: str) -> float | None:
    if row is None:
        return None
    value = row.get("avg_gap") if metric == "avg_gap" else (row.get("metrics") or {}).get(metric)
    return float("nan") if value is None and metric in (row.get("metrics") or {}) else value


def compare(committed: Committed, reproduced: dict[str, Any] | None, spread: dict[str, list[float]], k: float = K,
            atol: float = ATOL, rtol: float = RTOL) -> list[dict[str, Any]]:
    """One record per compared metric of `committed`: committed, reproduced, |diff|, tolerance, status.
    `reproduced` None: the rerun gave no row (every metric missing). `spread[metric]`: the committed values of the
    rows of its setting (for the tolerance)."""
    reason = exact_reason(committed.row, reproduced) if reproduced is not None else None
    records = []
    for metric in compared_metrics(committed.row):
        old, new = _value(committed.row, metric), _value(reproduced, metric)
        old = float("nan") if old is None else float(old)
        if new is None:
            records.append(dict(row=committed.label, metric=metric, committed=old, reproduced=float("nan"),
                                diff=float("nan"), tolerance=float("nan"), status="missing"))
            continue
        new = float(new)
        both_nan = math.isnan(old) and math.isnan(new)
        diff = 0.0 if both_nan or old == new else abs(old - new)
        tol = 0.0 if reason is None else tolerance(spread.get(metric, [old]), old, k, atol, rtol)
        ok = both_nan or old == new or (reason is not None and diff <= tol)
        records.append(dict(row=committed.label, metric=metric, committed=old, reproduced=new, diff=diff,
                            tolerance=tol, status="match" if ok else "drift"))
    return records


def spreads(rows: list[Committed]) -> dict[str, dict[str, list[float]]]:
    """{setting: {metric: the committed values of the rows of that setting}}: the seeds' spread per metric."""
    found: dict[str, dict[str, list[float]]] = {}
    for c in rows:
        for metric in compared_metrics(c.row):
            value = _value(c.row, metric)
            found.setdefault(setting(c.row), {}).setdefault(metric, []).append(
                float("nan") if value is None else float(value))
    return found
