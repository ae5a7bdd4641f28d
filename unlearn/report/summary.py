"""One setting's rows → its summary `Table`: reruns collapsed, mean, std and a 95% t-interval over runs, each
run's gap to its own oracle, Avg. Gap and RTE. `unlearn.report.compare` groups rows by setting and renders these
tables; `unlearn.report.plots` draws them. This module imports neither.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.stats import t

from unlearn.errors import UnlearnError
from unlearn.results import SETTING

ORACLE = "retrain"
#: config fields that do not change a run's results: two rows that differ only in these are one configuration
NOT_RESULTS = ("experiment", "results_dir", "table_path", "cache_dir", "use_cache", "save_model", "logger")
#: row fields that, beside the config, tell runs apart (rows without a config are told apart by these alone)
RUN_FIELDS = (*SETTING, "method", "seed", "scenario", "step", "stream_seed")


@dataclass
class Table:
    """One setting's summary: one row per method (or `by` value), Retrain first.

    `summary` columns: n, then <m>_mean, <m>_std, <m>_ci95, <m>_gap (|mean over rows of (m − the row's own
    oracle's m)|: the papers' gap of means, each run paired with its own oracle; empty for metrics outside Avg. Gap)
    per metric, avg_gap_mean, avg_gap_std, avg_gap_ci95, rte_s,
    rte_relative (RTE / Retrain in `rte_basis` seconds), diverged; indexed by label. `collapsed`: rows dropped as reruns of a configuration."""
    setting: dict
    metrics: list[str]
    gap_metrics: list[str]
    summary: pd.DataFrame
    commands: list[str]
    collapsed: int = 0
    rte_basis: str = "wall"  # what rte_relative divides: "cpu" seconds (every row ran on a CPU) or "wall" seconds

    @property
    def title(self) -> str:
        return title(self.setting)

    @property
    def note(self) -> str:
        return (f"{self.collapsed} duplicate rows (same configuration run again) collapsed; the latest kept."
                if self.collapsed else "")

    def display(self) -> pd.DataFrame:
        """The printed table: 'mean ± std (gap)' cells, Avg. Gap with its interval, RTE; all strings."""
        s, two = self.summary, "{:.2f}".format
        label = s.index.to_series()
        out = {"method": label, "n": s["n"]}
        for m in self.metrics:
            out[m] = s[f"{m}_mean"].map(two) + " ± " + s[f"{m}_std"].map(two)
            if m in self.gap_metrics:
                out[m] += s[f"{m}_gap"].map(" ({:.2f})".format).where(label != ORACLE, "")
        low, high = s["avg_gap_mean"] - s["avg_gap_ci95"], s["avg_gap_mean"] + s["avg_gap_ci95"]
        out |= {"Avg.Gap": s["avg_gap_mean"].map(two) + " ± " + s["avg_gap_std"].map(two),
                "Avg.Gap 95% CI": ("[" + low.map(two) + ", " + high.map(two) + "]").where(s["avg_gap_ci95"].notna(), ""),
                "RTE (s)": s["rte_s"].map(two), f"RTE/Retrain ({self.rte_basis})": s["rte_relative"].map(two), "diverged": s["diverged"]}
        return pd.DataFrame(out).astype(str)


def title(setting: dict) -> str:
    s = setting
    extra = "".join(f" · {k}={s[k]}" for k in s if k not in SETTING and not pd.isna(s[k]))
    return f"{s['task']} · data={s['data']} · model={s['model']} · forget={s['forget']}{extra}"


def _run_config(config) -> str:
    """The config as canonical JSON, less the fields in NOT_RESULTS."""
    kept = {k: v for k, v in config.items() if k not in NOT_RESULTS} if isinstance(config, dict) else {}
    return json.dumps(kept, sort_keys=True, default=str)


def latest_runs(members: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """`members` with each configuration once (RUN_FIELDS, method_params and the config less NOT_RESULTS all
    equal: a relaunched sweep, a rerun seed), the latest run kept: by `time` where rows have one (a row without
    one counts as older), else by order; and how many rows were dropped."""
    columns = [c for c in members if c in RUN_FIELDS or c.startswith("method_params.")]
    key = members[columns].astype(str).assign(_config=members["config"].map(_run_config) if "config" in members else "")
    when = pd.to_datetime(members["time"], utc=True, errors="coerce", format="ISO8601") if "time" in members else pd.NaT
    newest_last = key.assign(_when=when).reset_index(drop=True).sort_values("_when", kind="stable", na_position="first")
    keep = ~newest_last.drop(columns="_when").duplicated(keep="last").sort_index().to_numpy()
    return members[keep], int((~keep).sum())


def _oracle_rows(members: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Retrain rows: real `retrain` runs if any, else one per distinct oracle the rows carry, gap 0: per seed,
    one per distinct reference (`ref_oracle.<m>` of the metrics `names` shows, its training time aside: another
    stream or forget set has its own oracle); none where the rows carry no oracle."""
    real = members[members["method"] == ORACLE]
    refs = [f"ref_oracle.{m}" for m in names if f"ref_oracle.{m}" in members and not m.startswith("RTE_")]
    if not real.empty or not refs:
        return real
    ref = members[members[refs].notna().any(axis=1)].drop_duplicates(["seed", *refs])
    return ref.assign(**{m: ref[f"ref_oracle.{m}"] if f"ref_oracle.{m}" in ref else np.nan for m in names},
                      method=ORACLE, status="ok", avg_gap=0.0)


def _label(value) -> str:
    return "None" if value is None or value is pd.NA or value != value else str(value)


def summarise(members: pd.DataFrame, setting: dict, by: str, extra: Sequence[str], metric_order: Sequence[str]) -> Table:
    """One setting's rows → its Table (see Table): reruns collapsed (`latest_runs`), then mean, sample std and
    95% t half-width over finite values; a gap is |mean of (m − the row's own oracle's m)| (`ref_oracle.<m>`)."""
    members, collapsed = latest_runs(members)
    present = [m for m in metric_order if m in members and members[m].notna().any()]
    gap_metrics = [m for m in present if members.get(f"gap.{m}", pd.Series()).notna().any()]
    metrics = gap_metrics + [m for m in extra if m in present and m not in gap_metrics]
    # RTE / Retrain divides CPU seconds where every row ran on a CPU and has them (load moves wall time), else wall.
    cpu = "RTE_cpu_s" in members and members["RTE_cpu_s"].notna().all() and \
        members.get("rte_basis", pd.Series("wall", index=members.index)).eq("cpu").all()
    clock = "RTE_cpu_s" if cpu else "RTE_s"
    names = list(dict.fromkeys(metrics + [f"diff.{m}" for m in gap_metrics] + ["avg_gap", "RTE_s", clock]))
    rows = pd.concat([_oracle_rows(members, metrics + ["RTE_s", clock]), members[members["method"] != ORACLE]],
                     ignore_index=True)
    rows = rows.assign(**{f"diff.{m}": rows[m] - rows.get(f"ref_oracle.{m}", np.nan) for m in gap_metrics})
    if by not in rows:
        raise UnlearnError(f"--by {by}: no such column; the rows have: {', '.join(map(str, rows.columns))}")
    labels = rows[by].map(_label).where(rows["method"] != ORACLE, ORACLE).rename("method")
    grouped = rows.reindex(columns=names).astype(float).groupby(labels, sort=False)
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    std = std.where(count > 1, 0.0).where(count > 0)
    ci95 = std * t.ppf(0.975, (count - 1).where(count > 1)) / np.sqrt(count)
    oracle = mean.reindex([ORACLE]).iloc[0]  # NaN where the rows carry no oracle
    columns = {"n": grouped.size()}
    for m in metrics:
        columns |= {f"{m}_mean": mean[m], f"{m}_std": std[m], f"{m}_ci95": ci95[m],
                    f"{m}_gap": mean[f"diff.{m}"].abs() if m in gap_metrics else ""}
    columns |= {"avg_gap_mean": mean["avg_gap"], "avg_gap_std": std["avg_gap"], "avg_gap_ci95": ci95["avg_gap"],
                "rte_s": mean["RTE_s"], "rte_relative": mean[clock] / oracle[clock] if oracle[clock] else np.nan,
                "diverged": (rows["status"] != "ok").groupby(labels, sort=False).sum()}
    commands = sorted(set(members["command"].dropna()) - {""}) if "command" in members else []
    return Table(setting, metrics, gap_metrics, pd.DataFrame(columns), commands, collapsed, "cpu" if cpu else "wall")
