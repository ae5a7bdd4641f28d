"""Rows → the tables papers print: methods × metrics, mean ± std and a 95% CI over seeds, gap to Retrain,
Avg. Gap, RTE and RTE relative to Retrain; plus a forgetting–utility plot.

Rows from different settings (task, data, model, forget set) are never mixed: each gets its own table.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from unlearn.errors import UnlearnError
from unlearn.report.tables import latex, markdown, to_csv

ORACLE = "retrain"
#: shown beside the gap metrics when present (the rest stay in the rows and the CSV of every metric)
EXTRA_METRICS = ("kl_forget", "klom_forget", "lira_auc", "eps_score")
FORMATS = ("md", "csv", "latex")


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows from a table.jsonl, a result.json, or a folder (its result.json files, else its *.jsonl tables)."""
    path = Path(path)
    if not path.exists():
        raise UnlearnError(f"no results at {path}")
    files = (sorted(path.rglob("result.json")) or sorted(path.rglob("*.jsonl"))) if path.is_dir() else [path]
    rows, seen = [], set()
    for file in files:
        text = file.read_text()
        items = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" else [json.loads(text)]
        for row in items:
            if row.get("run_id") not in seen:
                seen.add(row.get("run_id"))
                rows.append(row)
    if not rows:
        raise UnlearnError(f"no result rows found under {path}")
    return rows


def setting_of(row: dict[str, Any]) -> tuple:
    """What makes rows comparable: task, data, model, and the forget builder's configuration (not its
    per-seed outcome such as the size or a selection loss), plus pruning if any."""
    config = row.get("config") or {}
    forget = config.get("forget") or {k: v for k, v in row["forget"].items() if k not in ("size", "groups")}
    forget = {k: v for k, v in forget.items() if not k.startswith("_")} | {"builder": row["forget"].get("builder")}
    if config.get("prune"):
        forget["prune"] = {k: v for k, v in config["prune"].items() if not k.startswith("_")} | \
            {"method": config["prune"]["_target_"].rsplit(".", 1)[-1]}
    return (row["task"], row["data"], row["model"], json.dumps(forget, sort_keys=True))


def field(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def stats(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample std and the half-width of a 95% t-interval over the finite values."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci95": float("nan"), "n": 0}
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    if len(arr) > 1:
        from scipy.stats import t

        ci = float(t.ppf(0.975, len(arr) - 1) * std / math.sqrt(len(arr)))
    else:
        ci = float("nan")
    return {"mean": float(arr.mean()), "std": std, "ci95": ci, "n": len(arr)}


def _oracle_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Retrain rows: real `retrain` runs if any, else the oracle reference every row carries (one per seed)."""
    real = [r for r in rows if r["method"] == ORACLE]
    if real:
        return real
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {"method": ORACLE, "seed": r["seed"], "status": "ok",
                                       "metrics": r["reference"]["oracle"], "avg_gap": 0.0})
    return list(by_seed.values())


def summarise_setting(rows: list[dict[str, Any]], by: str = "method",
                      extra: Sequence[str] = EXTRA_METRICS) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric names, one summary per group: its label, n, per-metric stats and gaps, Avg. Gap, RTE)."""
    gap_metrics = sorted({m for r in rows for m in r.get("gap", {})}, key=lambda m: list(rows[0]["metrics"]).index(m))
    metrics = gap_metrics + [m for m in extra if m in rows[0]["metrics"] and m not in gap_metrics]
    oracle = _oracle_rows(rows)
    oracle_mean = {m: stats(r["metrics"].get(m) for r in oracle)["mean"] for m in metrics + ["RTE_s"]}
    groups: dict[str, list] = defaultdict(list)
    for r in oracle + [r for r in rows if r["method"] != ORACLE]:
        groups[ORACLE if r["method"] == ORACLE else str(field(r, by))].append(r)
    summaries = []
    for label, members in groups.items():
        per_metric = {m: stats(r["metrics"].get(m) for r in members) for m in metrics}
        rte = stats(r["metrics"].get("RTE_s") for r in members)
        summaries.append({
            "label": label, "n": len(members), "metrics": per_metric,
            "gap": {m: abs(per_metric[m]["mean"] - oracle_mean[m]) for m in gap_metrics},
            "avg_gap": stats(r.get("avg_gap") for r in members), "rte": rte,
            "rte_relative": rte["mean"] / oracle_mean["RTE_s"] if oracle_mean["RTE_s"] else float("nan"),
            "diverged": sum(r["status"] != "ok" for r in members),
        })
    return metrics, summaries


def _cell(s: dict[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def _table(metrics: Sequence[str], summaries: list[dict[str, Any]], fmt: str) -> tuple[list[str], list[list[Any]]]:
    if fmt == "csv":  # every number in its own column
        headers = ["method", "n"] + [f"{m}_{k}" for m in metrics for k in ("mean", "std", "ci95", "gap")] + \
                  ["avg_gap_mean", "avg_gap_std", "avg_gap_ci95", "rte_s", "rte_relative", "diverged"]
        rows = [[s["label"], s["n"]] + [v for m in metrics for v in (*(s["metrics"][m][k] for k in ("mean", "std", "ci95")),
                                                                     s["gap"].get(m))]
                + [s["avg_gap"]["mean"], s["avg_gap"]["std"], s["avg_gap"]["ci95"], s["rte"]["mean"], s["rte_relative"],
                   s["diverged"]] for s in summaries]
        return headers, rows
    headers = ["method", "n"] + list(metrics) + ["Avg.Gap", "Avg.Gap 95% CI", "RTE (s)", "RTE/Retrain", "diverged"]
    rows = []
    for s in summaries:
        cells = [s["label"], s["n"]]
        for m in metrics:
            gap = s["gap"].get(m)
            cells.append(_cell(s["metrics"][m]) + (f" ({gap:.2f})" if gap is not None and s["label"] != ORACLE else ""))
        ag = s["avg_gap"]
        ci = "" if math.isnan(ag["ci95"]) else f"[{ag['mean'] - ag['ci95']:.2f}, {ag['mean'] + ag['ci95']:.2f}]"
        cells += [_cell(ag), ci, s["rte"]["mean"], s["rte_relative"], s["diverged"]]
        rows.append(cells)
    return headers, rows


def plot(summaries_by_setting: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Forgetting–utility trade-off: UA vs TA (left) and Avg. Gap vs RTE (right), one panel row per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summaries_by_setting), 2, figsize=(11, 4.2 * len(summaries_by_setting)), squeeze=False)
    for (title, summaries), (left, right) in zip(summaries_by_setting.items(), axes):
        for s in summaries:
            m = s["metrics"]
            x_name, y_name = (("UA", "TA") if {"UA", "TA"} <= set(m) else tuple(list(m)[:2]) + (None,) * (2 - len(m)))[:2]
            if x_name and y_name:
                left.errorbar(m[x_name]["mean"], m[y_name]["mean"], xerr=m[x_name]["std"], yerr=m[y_name]["std"],
                              fmt="o", capsize=3, label=s["label"])
                left.set_xlabel(f"{x_name} (forgetting →)")
                left.set_ylabel(f"{y_name} (utility ↑)")
            right.errorbar(max(s["rte"]["mean"], 1e-3), s["avg_gap"]["mean"], yerr=s["avg_gap"]["std"], fmt="o",
                           capsize=3, label=s["label"])
        right.set_xscale("log")
        right.set_xlabel("RTE (s, log)")
        right.set_ylabel("Avg. Gap to Retrain (↓)")
        left.set_title(title, fontsize=9, loc="left")
        right.legend(fontsize=8, loc="best")
        for ax in (left, right):
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(path: str | Path, fmt: str = "md", by: str = "method", plot_path: Path | None = None,
            metrics: Sequence[str] | None = None) -> str:
    """Tables of `path`'s rows per setting; `metrics` picks the columns after the gap metrics (default:
    EXTRA_METRICS where present)."""
    if fmt not in FORMATS:
        raise UnlearnError(f"--format {fmt!r} is not one of {FORMATS}")
    rows = load_rows(path)
    if metrics is not None:
        known = {m for r in rows for m in r["metrics"]}
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise UnlearnError(f"--metrics {','.join(unknown)}: no row has them; the rows have: {', '.join(sorted(known))}")
    settings: dict[tuple, list] = defaultdict(list)
    for row in rows:
        settings[setting_of(row)].append(row)
    out, for_plot = [], {}
    for (task, data, model, forget), members in settings.items():
        columns, summaries = summarise_setting(members, by, EXTRA_METRICS if metrics is None else metrics)
        headers, table = _table(columns, summaries, fmt)
        title = f"{task} · data={data} · model={model} · forget={forget}"
        for_plot[title] = summaries
        commands = sorted({r.get("command", "") for r in members if r.get("command")})
        if fmt == "csv":
            block = to_csv(["task", "data", "model", "forget"] + headers, [[task, data, model, forget] + r for r in table])
            # Settings with the same columns share one header, so the CSV loads as one frame.
            same_columns = out and out[0].splitlines()[0] == block.splitlines()[0]
            out.append(block.split("\n", 1)[1] if same_columns else block)
        elif fmt == "latex":
            out.append(latex(headers, table, caption=title))
        else:
            out.append(f"### {title}\n\nmean ± std over runs; (gap to Retrain) after each gap metric; "
                       f"Avg.Gap with its 95% t-interval; RTE in seconds.\n\n" + markdown(headers, table)
                       + ("\n\nMade by:\n" + "\n".join(f"    {c}" for c in commands) if commands else ""))
    if plot_path is not None:
        plot(for_plot, plot_path)
    if fmt == "csv":
        return "".join(out)
    return "\n\n".join(out) + "\n"
