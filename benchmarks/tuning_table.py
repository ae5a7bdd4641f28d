"""The tables of results/tuning.md from its rows files: every method under (a) its defaults, (b) equal-budget tuning on
validation requests, (c) oracle tuning on the reported request (optimistic), with how much of its apparent standing
comes from where it was tuned.

    python benchmarks/tuning_table.py results/tuning_digits_random.jsonl results/tuning_digits_class.jsonl ...
    python benchmarks/tuning_table.py results/tuning_digits_class.jsonl --plot results/tuning_digits_class.png

Rows of tuning trials (`trial` in them) are left out. A row's protocol is read from the row itself: no `tuned` field → defaults; `tuned.validation.request` "validation" →
tuned on validation; "reported" → oracle tuning. Cells are mean ± std over the rows (seeds) of a method and protocol;
"optimism" is (b)'s Avg. Gap minus (c)'s on seed 0, the seed whose reported request oracle tuning searched on: how
much better the method looks there than the honest protocol makes it; the same difference over all seeds shows how
much of that carries over to requests it was not tuned on.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from unlearn.results import load

PROTOCOLS = {"defaults": "(a) defaults", "validation": "(b) tuned on validation", "reported": "(c) oracle tuning"}


def protocol(row: pd.Series) -> str:
    request = row.get("tuned.validation.request")
    return "defaults" if not isinstance(request, str) else request


def reported(path: Path):
    """The rows of `path` a table reports (no tuning trials, no retrain), with their `protocol`."""
    frame = load(path)
    trials = frame["trial.request"].notna() if "trial.request" in frame else False  # a tuning's trials: not reported
    return frame[(frame["method"] != "retrain") & ~trials].assign(protocol=lambda f: f.apply(protocol, axis=1))


def table(path: Path) -> str:
    frame = reported(path)
    gap_metrics = [c.removeprefix("gap.") for c in frame if c.startswith("gap.")]
    lines = [f"### {path.stem.removeprefix('tuning_')}", "",
             "| method | protocol | n | Avg. Gap | " + " | ".join(gap_metrics) + " | lr | epochs | tuned on |",
             "|---|---|---|---|" + "---|" * len(gap_metrics) + "---|---|---|"]
    summary = {}
    seed0 = {}
    order = {kind: i for i, kind in enumerate(PROTOCOLS)}
    groups = sorted(frame.groupby(["method", "protocol"]), key=lambda item: (item[0][0], order[item[0][1]]))
    for (method, kind), runs in groups:
        mean = lambda c: runs[c].astype(float).mean()  # noqa: E731
        std = lambda c: runs[c].astype(float).std(ddof=1) if len(runs) > 1 else 0.0  # noqa: E731
        summary[(method, kind)] = mean("avg_gap")
        seed0[(method, kind)] = float(runs.loc[runs["seed"] == 0, "avg_gap"].astype(float).mean())
        where = int(runs["tuned.validation.seed"].iloc[0]) if kind != "defaults" else "-"
        lines.append(f"| {method} | {PROTOCOLS[kind]} | {len(runs)} | {mean('avg_gap'):.2f} ± {std('avg_gap'):.2f} | "
                     + " | ".join(f"{mean(m):.2f} ± {std(m):.2f}" for m in gap_metrics)
                     + f" | {runs['method_params.lr'].iloc[0]:.3g} | {runs['method_params.epochs'].iloc[0]} | "
                       f"{'seed ' + str(where) if kind != 'defaults' else '-'} |")
    methods = sorted({m for m, _ in summary})
    lines += ["", "Avg. Gap on seed 0 (the request oracle tuning searched on) and over all seeds:", "",
              "| method | (a) seed 0 | (b) seed 0 | (c) seed 0 | optimism on seed 0: (b) − (c) | (a) all | (b) all | "
              "(c) all | (b) − (c), all seeds |", "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        a0, b0, c0 = (seed0.get((method, k), float("nan")) for k in PROTOCOLS)
        a, b, c = (summary.get((method, k), float("nan")) for k in PROTOCOLS)
        lines.append(f"| {method} | {a0:.2f} | {b0:.2f} | {c0:.2f} | {b0 - c0:+.2f} | {a:.2f} | {b:.2f} | {c:.2f} | "
                     f"{b - c:+.2f} |")
    lines.append("")
    for kind, label in PROTOCOLS.items():
        ranked = sorted(methods, key=lambda m: summary.get((m, kind), float("inf")))
        lines.append(f"- ranking by mean Avg. Gap under {label}: " + " < ".join(ranked))
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    """Print the tables of the rows files in `argv`; with `--plot PNG` (one rows file), draw its trajectories, one line
    per method and protocol (`unlearn.report.plots.trajectories`)."""
    if "--plot" in argv:
        at = argv.index("--plot")
        (path,), target = [a for i, a in enumerate(argv) if i not in (at, at + 1)], argv[at + 1]
        from unlearn.report import plots

        frame = reported(Path(path))
        frame["method"] = frame["method"] + " " + frame["protocol"].map(lambda k: PROTOCOLS[k].split(" ")[0])
        plots.trajectories(frame, target)
        return
    print("\n\n".join(table(Path(p)) for p in argv))


if __name__ == "__main__":
    main(sys.argv[1:])
