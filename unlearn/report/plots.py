"""Pictures of compare's tables: the forgetting–utility trade-off, per-step curves for sequences, and the
unlearning trajectories (method.eval_every: metric against step per method, the oracle's level as a line).

The first two take summary `Table`s (`unlearn.report.summary`, made by `compare.tables` or `compare.stream_tables`),
`trajectories` the results DataFrame; each writes a PNG to a path or a binary file object.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

import pandas as pd  # noqa: E402

from unlearn.report.compare import short_title  # noqa: E402
from unlearn.report.summary import Table  # noqa: E402
from unlearn.results import SETTING  # noqa: E402


def _save(fig, target: str | Path | IO[bytes]) -> None:
    if isinstance(target, (str, Path)):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=120, format="png")
    plt.close(fig)


def _without_step(table: Table) -> tuple:
    return tuple((k, v) for k, v in table.setting.items() if k != "step")


def rte_axis(axis, values) -> None:
    """A log axis of run times (`axis`: ax.xaxis) that labels every tick legibly: plain numbers at 1-2-5 steps
    over a span of at most 2 decades, at powers of ten (a few at most) over a wider one; minor ticks unlabelled."""
    finite = [v for v in values if v == v and v > 0]
    decades = math.log10(max(finite) / min(finite)) if finite else 0.0
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,), numticks=7))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def tradeoff_figure(found: list[Table]):
    """The figure of `tradeoff` (a matplotlib Figure, not yet saved)."""
    last = list({_without_step(t): t for t in found}.values())
    fig, axes = plt.subplots(len(last), 2, figsize=(11, 4.2 * len(last)), squeeze=False)
    for table, (left, right) in zip(last, axes):
        s = table.summary
        x, y = ("UA", "TA") if {"UA", "TA"} <= set(table.metrics) else (table.metrics + [None, None])[:2]
        times = [max(row["rte_s"], 1e-3) for _, row in s.iterrows()]
        for (label, row), seconds in zip(s.iterrows(), times):
            if x and y:
                left.errorbar(row[f"{x}_mean"], row[f"{y}_mean"], xerr=row[f"{x}_std"], yerr=row[f"{y}_std"], fmt="o",
                              capsize=3, label=label)
            right.errorbar(seconds, row["avg_gap_mean"], yerr=row["avg_gap_std"], fmt="o", capsize=3, label=label)
        if x and y:
            left.set_xlabel(f"{x} (forgetting →)")
            left.set_ylabel(f"{y} (utility ↑)")
        right.set_xscale("log")
        rte_axis(right.xaxis, times)
        right.set_xlabel("RTE (s, log)")
        right.set_ylabel("Avg. Gap to Retrain (↓)")
        # A short title: a long one makes tight_layout squeeze the panels to one side.
        left.set_title(textwrap.fill(short_title(table.setting), 90), fontsize=9, loc="left")
        right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        for ax in (left, right):
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tradeoff(found: list[Table], target: str | Path | IO[bytes]) -> None:
    """UA vs TA (else the first two metrics; left) and Avg. Gap vs RTE (right), one panel row per setting;
    for a sequence, its last step (the steps are in `steps`)."""
    _save(tradeoff_figure(found), target)


def steps(found: list[Table], target: str | Path | IO[bytes]) -> None:
    """Per-step curves of a sequence: each gap metric and Avg. Gap against the step, one line per method (mean
    ± std over seeds), one panel row per setting."""
    sequences: dict[tuple, list[Table]] = {}
    for table in found:
        if not pd.isna(table.setting.get("step")):
            sequences.setdefault(_without_step(table), []).append(table)
    width = max(len(tables[0].gap_metrics) + 1 for tables in sequences.values())
    fig, axes = plt.subplots(len(sequences), width, figsize=(3.4 * width, 3.0 * len(sequences)), squeeze=False)
    for tables, row_axes in zip(sequences.values(), axes):
        tables = sorted(tables, key=lambda t: t.setting["step"])
        panels = [(f"{m}_mean", f"{m}_std", m) for m in tables[0].gap_metrics]
        panels.append(("avg_gap_mean", "avg_gap_std", "Avg. Gap to Retrain"))
        labels = list(dict.fromkeys(label for t in tables for label in t.summary.index))
        for (mean, std, name), ax in zip(panels, row_axes):
            for label in labels:
                points = [(t.setting["step"], t.summary.loc[label, mean], t.summary.loc[label, std])
                          for t in tables if label in t.summary.index]
                xs, ys, es = zip(*points)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, label=label)
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        row_axes[0].set_title(textwrap.fill(short_title(dict(_without_step(tables[0]))), 100), fontsize=8, loc="left")
        row_axes[len(panels) - 1].legend(fontsize=7, loc="best")
        for ax in row_axes[len(panels):]:
            ax.axis("off")
    _save(fig, target)


def has_trajectories(frame: pd.DataFrame) -> bool:
    """Whether rows of `frame` (a results DataFrame) recorded a trajectory (method.eval_every)."""
    return "trajectory.avg_gap" in frame and frame["trajectory.avg_gap"].notna().any()


def trajectory_curves(frame: pd.DataFrame) -> list[tuple[dict, list[str], dict[str, pd.DataFrame], dict[str, float]]]:
    """Per setting of the rows that recorded a trajectory: (the setting, the recorded metrics plus "avg_gap", per method
    a frame of the mean and std over runs of each metric by position (column `position`, in the trajectory's unit),
    the oracle's mean level of each metric). A position only some runs reached (a run stopped at its selected
    checkpoint) is averaged over those."""
    rows = frame[frame["trajectory.avg_gap"].notna()] if has_trajectories(frame) else frame.iloc[:0]
    out = []
    for values, members in rows.groupby(list(SETTING), sort=False, dropna=False):
        names = list(dict.fromkeys(m for ms in members["trajectory.metrics"] for m in ms)) + ["avg_gap"]
        methods: dict[str, pd.DataFrame] = {}
        for method, runs in members.groupby("method", sort=False):
            points = []
            for _, run in runs.iterrows():
                unit = run["trajectory.unit"]
                for i, position in enumerate(run[f"trajectory.{unit}"]):
                    points.append({"position": position, **{n: run[f"trajectory.{n}"][i] for n in names
                                                            if isinstance(run.get(f"trajectory.{n}"), tuple)}})
            table = pd.DataFrame(points).groupby("position")
            methods[method] = table.mean().join(table.std(ddof=0).add_suffix("_std")).reset_index()
        oracle = {n: float(members[f"trajectory.oracle.{n}"].mean()) for n in names if f"trajectory.oracle.{n}" in members}
        oracle["avg_gap"] = 0.0
        unit = members["trajectory.unit"].iloc[0]
        out.append((dict(zip(SETTING, values)) | {"unit": unit}, names, methods, oracle))
    return out


def trajectories(frame: pd.DataFrame, target: str | Path | IO[bytes]) -> None:
    """The unlearning trajectories (method.eval_every): each recorded metric and Avg. Gap against the step (or epoch),
    one line per method (mean over runs, a band of ± std), the oracle's level as a dashed line; one panel row per
    setting."""
    curves = trajectory_curves(frame)
    width = max(len(names) for _, names, _, _ in curves)
    fig, axes = plt.subplots(len(curves), width, figsize=(3.4 * width, 3.0 * len(curves)), squeeze=False)
    for (setting, names, methods, oracle), row_axes in zip(curves, axes):
        for name, ax in zip(names, row_axes):
            for method, points in methods.items():
                if name not in points:
                    continue
                line, = ax.plot(points["position"], points[name], marker=".", label=method)
                ax.fill_between(points["position"], points[name] - points[f"{name}_std"],
                                points[name] + points[f"{name}_std"], color=line.get_color(), alpha=0.15)
            if name in oracle:
                ax.axhline(oracle[name], color="k", linestyle="--", linewidth=1, label="oracle")
            ax.set_xlabel(setting["unit"])
            ax.set_ylabel("Avg. Gap to Retrain (subset)" if name == "avg_gap" else name)
            ax.grid(alpha=0.3)
        row_axes[0].set_title(textwrap.fill(short_title({k: v for k, v in setting.items() if k != "unit"}), 100),
                              fontsize=8, loc="left")
        # Beside the last panel: inside it, a dozen methods' labels would hide the curves.
        row_axes[len(names) - 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        for ax in row_axes[len(names):]:
            ax.axis("off")
    _save(fig, target)
