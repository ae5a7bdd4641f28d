"""Boards → what a person reads: Markdown (the terminal's and results/leaderboard.md), CSV (every number), and a
self-contained HTML page (a section per setting, a table of contents, a small interval plot per setting, the
glossary of the metrics shown). Formatting, table splitting, page style and table markup are the HTML report's
(`unlearn.report`), so a board reads like compare's tables.
"""
from __future__ import annotations

import html
import textwrap
from typing import IO, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from unlearn.leaderboard.board import LEVEL, ORIGINAL, RETRAIN, Board  # noqa: E402
from unlearn.report import html as report  # noqa: E402
from unlearn.report.compare import heading, short_title  # noqa: E402
from unlearn.report.tables import fmt, split_markdown, wrap  # noqa: E402

REFERENCE = "ref"  # the rank cell of a reference line (the HTML page shades rows led by it)
LEGEND = (f"Ranked by Avg. Gap (the mean over the task's gap metrics of |metric − Retrain's|, in the metrics' units; "
          f"lower: closer to Retrain): mean over seeds ± the half-width of its {LEVEL:.0%} t-interval (one seed: the "
          f"value alone, no interval). rank: the place of the best method whose interval overlaps its own, so "
          f"methods that cannot be told apart share a rank. {RETRAIN} and {ORIGINAL} (the model before unlearning, "
          f"scored the same way) are reference lines ({REFERENCE}), never ranked. n: seeds. RTE (s): the method's "
          f"seconds (a stream's: over all its steps; Retrain's: training the oracle); RTE/Retrain: each run's over "
          f"its own oracle's. 'after <attack>': the attacked model's Avg. Gap to the oracle attacked alike "
          f"(± as above). Rows of one setting from several tables are pooled; each run is scored against its own "
          f"oracle.")


def _spread(mean: float, half: float) -> str:
    if pd.isna(mean):
        return "—"
    return fmt(float(mean)) + ("" if pd.isna(half) else f" ± {fmt(float(half))}")


def cells(found: Board) -> pd.DataFrame:
    """A Board as printed (all strings): rank ('ref' for Retrain and Original, '—' for a method without any finite
    Avg. Gap), method, n, Avg.Gap ('mean ± half'), the interval, RTE (s), RTE/Retrain, an 'after <attack>' column
    per attack configuration that ran here, and diverged (rows) when any run diverged."""
    e = found.entries
    reference = e["kind"] == "reference"
    rank = e["rank"].map(lambda r: "—" if pd.isna(r) else str(int(r))).where(~reference, REFERENCE)
    out = {"rank": rank, "method": e.index.to_series(), "n": e["n"].map(lambda n: str(int(n)))}
    out["Avg.Gap"] = [_spread(m, h) for m, h in zip(e["mean"], e["half"])]
    out[f"{LEVEL:.0%} CI"] = [f"[{fmt(lo)}, {fmt(hi)}]" if not pd.isna(h) else "" for lo, hi, h in
                              zip(e["low"], e["high"], e["half"])]
    out["RTE (s)"] = e["rte_s"].map(lambda v: "—" if pd.isna(v) else fmt(float(v)))
    out["RTE/Retrain"] = e["rte_relative"].map(lambda v: "—" if pd.isna(v) else fmt(float(v)))
    for attack in found.attacks:
        out[f"after {attack}"] = [_spread(m, h) for m, h in
                                  zip(found.robust_mean[attack], found.robust_half[attack])]
    if e["diverged"].fillna(0).gt(0).any():
        out["diverged"] = e["diverged"].fillna(0).astype(int).astype(str)
    return pd.DataFrame(out).reset_index(drop=True).astype(str)


def note(found: Board) -> str:
    """What a board's numbers rest on, in a sentence or four."""
    parts = [f"Avg. Gap over {', '.join(found.gap_metrics)}."]
    if not pd.isna(found.setting.get("step", float("nan"))):
        parts.append(f"Ranked at step {found.setting['step']}, the stream's last.")
    runs = int(found.entries["runs"].sum())
    parts.append(f"{runs} runs from {', '.join(found.sources)}." if found.sources else f"{runs} runs.")
    if found.oracles_per_seed > 1:
        parts.append(f"A seed's runs here were scored against up to {found.oracles_per_seed} different oracles "
                     "(other tables, code versions or data recipes); each run's Avg. Gap is to its own.")
    if found.collapsed:
        parts.append(f"{found.collapsed} reruns of a configuration collapsed (the latest kept).")
    return " ".join(parts)


def _unranked(unranked: Sequence[tuple[dict, int]]) -> list[str]:
    return [f"{short_title(setting)} ({rows} rows)" for setting, rows in unranked]


def markdown(found: Sequence[Board], unranked: Sequence[tuple[dict, int]] = (), command: str | None = None) -> str:
    """The boards as one Markdown document: a title, the command that made it (when given), the legend, then per
    setting compare's heading, the board (split to the terminal's width, each part led by rank and method) and its
    note; last, the settings that could not be ranked."""
    parts = ["# Leaderboard"]
    if command:
        parts.append(f"Made by:\n\n    {command}")
    parts.append(wrap(LEGEND))
    for one in found:
        parts += [heading(one.setting), split_markdown(cells(one), ["rank", "method"]), wrap(note(one))]
    if unranked:
        parts.append("Not ranked (no row has an Avg. Gap: no oracle to compare with):\n\n"
                     + "\n".join(f"- {line}" for line in _unranked(unranked)))
    return "\n\n".join(parts) + "\n"


def csv(found: Sequence[Board]) -> str:
    """Every number of every board, one line per (setting, line of the board): the setting's columns, rank, method,
    kind, n, avg_gap (mean), std, ci_low, ci_high, rte_s, rte_relative, runs, diverged, then per attack configuration
    'after <attack>' (mean) and 'after <attack> ci_half'."""
    blocks = []
    for one in found:
        e = one.entries
        data = pd.DataFrame({"rank": e["rank"], "method": e.index, "kind": e["kind"], "n": e["n"],
                             "avg_gap": e["mean"], "std": e["std"], "ci_low": e["low"].where(e["n"] > 0),
                             "ci_high": e["high"].where(e["n"] > 0), "rte_s": e["rte_s"],
                             "rte_relative": e["rte_relative"], "runs": e["runs"], "diverged": e["diverged"]})
        for attack in one.attacks:
            data[f"after {attack}"] = one.robust_mean[attack]
            data[f"after {attack} ci_half"] = one.robust_half[attack]
        for i, (key, value) in enumerate(one.setting.items()):
            data.insert(i, key, value)
        blocks.append(data)
    frame = pd.concat(blocks, ignore_index=True, sort=False)
    for column in ("rank", "n", "runs", "diverged", "step"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame.to_csv(index=False, float_format="%.4f", lineterminator="\n")


# ---- the HTML page -----------------------------------------------------------------------------------------------

def interval_plot(found: Board, target: str | IO[bytes]) -> None:
    """The board as a picture: each method's Avg. Gap with its interval (one seed: a point), rank 1 in colour,
    the Original as a dashed line (Retrain is 0); in the board's order, top down."""
    e = found.entries[(found.entries["kind"] == "method") & found.entries["mean"].notna()]
    fig, ax = plt.subplots(figsize=(7.0, 1.0 + 0.24 * max(len(e), 1)))
    ys = list(range(len(e)))[::-1]
    colours = ["C0" if r == 1 else "0.45" for r in e["rank"]]
    for y, (_, row), colour in zip(ys, e.iterrows(), colours):
        ax.errorbar(row["mean"], y, xerr=0 if pd.isna(row["half"]) else row["half"], fmt="o", ms=4, capsize=3,
                    color=colour)
    original = found.entries.loc[ORIGINAL, "mean"]
    if not pd.isna(original):
        ax.axvline(original, ls="--", color="C3", lw=1)
        # named above the axes: a legend inside them would cover an interval
        ax.set_title(f"dashed: {ORIGINAL} ({fmt(float(original))})", fontsize=8, loc="right", color="C3")
    ax.axvline(0, color="0.2", lw=0.8)
    ax.set_yticks(ys, [textwrap.shorten(str(label), 40) for label in e.index], fontsize=8)
    ax.set_ylim(-0.7, len(e) - 0.3)
    ax.set_xlabel(f"Avg. Gap to Retrain (↓), {LEVEL:.0%} t-interval over seeds", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(target, dpi=90, format="png")  # small: a committed page holds one per setting
    plt.close(fig)


def page(found: Sequence[Board], unranked: Sequence[tuple[dict, int]] = (), command: str | None = None,
         title: str = "leaderboard") -> str:
    """One self-contained HTML page (images embedded): the legend, a table of contents, a section per setting
    (`#board-<i>`: short heading, the full setting folded, the board with the reference lines shaded, the interval
    plot, the note), the settings not ranked, and a glossary of the metrics the page names."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if command:
        parts.append(f'<p class="meta">Made by <code>{html.escape(command)}</code></p>')
    parts.append(f'<p class="meta">{len(found)} settings ranked. {html.escape(LEGEND)} Metrics are explained '
                 f'<a href="#glossary">at the end</a>.</p>')
    parts.append("<nav><ol>" + "".join(f'<li><a href="#board-{i}">{html.escape(short_title(b.setting))}</a></li>'
                                       for i, b in enumerate(found))
                 + ('<li><a href="#unranked">not ranked</a></li>' if unranked else "") + "</ol></nav>")
    shown = ["Avg.Gap", "RTE_s"]
    for i, one in enumerate(found):
        picture = report._png(interval_plot, one)
        parts.append(f'<section id="board-{i}"><h2>{html.escape(short_title(one.setting))}</h2>'
                     + report._setting_details(one.setting) + report._table(cells(one), (REFERENCE,))
                     + f'<p class="note">{html.escape(note(one))}</p>'
                     + f"<figure>{report._img(picture, 'interval plot: ' + short_title(one.setting))}"
                     + "<figcaption>Avg. Gap with its interval per method, rank 1 in blue; dashed: the Original."
                       "</figcaption></figure></section>")
        shown += one.gap_metrics + [f"{a.split(' ')[0]}.{m}" for a in one.attacks for m in one.gap_metrics[:1]]
    if unranked:
        parts.append('<h2 id="unranked">Not ranked</h2><p class="note">No row of these settings has an Avg. Gap (no '
                     'oracle to compare with).</p><ul>'
                     + "".join(f"<li>{html.escape(line)}</li>" for line in _unranked(unranked)) + "</ul>")
    tasks = sorted({str(b.setting["task"]) for b in found})
    parts += ['<h2 id="glossary">Metrics on this page</h2>', report.glossary(shown, tasks)]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>unlearn · {html.escape(title)}</title><style>{report.STYLE}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
