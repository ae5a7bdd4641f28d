"""Pictures of compare's tables: the forgetting–utility trade-off and, for sequences, per-step curves.

Both take summary `Table`s (`unlearn.report.summary`, made by `compare.tables` or `compare.stream_tables`) and
write a PNG to a path or a binary file object.
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
