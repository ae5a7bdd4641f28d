"""Before/after table of an experiment's rows: the original, the oracle and each method, mean ± std over seeds
of the given metrics (e.g. a forget metric and its `relearn.` counterpart, or RESTOR's accuracies).

    python benchmarks/before_after.py results/relearn_digits.jsonl UA relearn.UA TA relearn.TA
"""
from __future__ import annotations

import sys
from collections import defaultdict

import numpy as np

from unlearn.report.compare import load_rows
from unlearn.report.tables import markdown


def table(rows: list[dict], metrics: list[str]) -> str:
    references: dict[int, dict] = {}  # one original and one oracle per seed, whichever rows carry them
    methods: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        references.setdefault(r["seed"], r["reference"])
        if r["method"] != "retrain":  # retrain's metrics are the oracle's
            methods[r["method"]].append(r["metrics"])
    groups = {"original": [ref["original"] for ref in references.values()],
              "oracle (retrain)": [ref["oracle"] for ref in references.values()], **methods}

    def cell(values: list) -> str:
        v = np.array([np.nan if x is None else x for x in values], dtype=float)
        return f"{np.nanmean(v):.2f} ± {np.nanstd(v):.2f}" if np.isfinite(v).any() else "nan"

    return markdown(["model", "n", *metrics],
                    [[name, len(ms), *[cell([m.get(k) for m in ms]) for k in metrics]] for name, ms in groups.items()])


if __name__ == "__main__":
    print(table(load_rows(sys.argv[1]), sys.argv[2:]))
