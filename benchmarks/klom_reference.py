"""KLoM's two reference points at a population size N: what doing nothing scores and what a perfect method scores.

With N models per side and 20 bins, KLoM is far from 0 even between two sets of exact retrains: most bins hold
zero or one sample, so the two histograms rarely overlap. Method rows from `eval.oracles=N` are only
readable against these two rows of the same N:
- "no unlearning": the N originals against the N oracles;
- "independent retrain": N more retrains on D \\ F, with seeds of their own, against the same N oracles (the
  noise floor: no method can expect less). The table's Retrain row is 0 by identity, since its models are the
  evaluation oracles themselves.

    python benchmarks/klom_reference.py eval=population seed=0 [other run.py overrides]

Models come from (and go to) the harness cache, so after a population sweep only the extra retrains train.
"""
from __future__ import annotations

import sys

import numpy as np

from unlearn.eval.kl import summarize
from unlearn.eval.klom import klom
from unlearn.models.pruning import masks_of
from unlearn.config import compose_config
from unlearn.pipeline import Experiment

SPLITS = ("forget", "retain", "test")


def reference_klom(overrides: list[str]) -> dict[str, dict[str, float]]:
    experiment = Experiment(compose_config(*overrides))
    first = experiment.prepare()
    splits = experiment.splits()
    stats: dict[str, list] = {"original": [], "oracle": [], "independent": []}
    population = experiment.member_seeds(experiment.n_models)
    for seed, independent_seed in zip(population, experiment.member_seeds(experiment.n_models, "reference")):
        art = first if seed == experiment.seed else experiment.prepare(model_seed=seed)
        # With pruning, member k's oracle keeps original k's masks; its independent twin does too.
        twin = experiment.models.model_from_state(experiment.models.oracle(independent_seed, masks_of(art.original) or None)[0])
        for role, model in (("original", art.original), ("oracle", art.oracle), ("independent", twin)):
            stats[role].append(experiment.task.example_statistics(model, splits, experiment.runtime))
    stacked = {role: {s: np.stack([m[s] for m in members]) for s in SPLITS} for role, members in stats.items()}
    rows = {}
    for label, role in (("no unlearning", "original"), ("independent retrain", "independent")):
        row = {}
        for split in SPLITS:
            summary = summarize(klom(stacked[role][split], stacked["oracle"][split]))
            row[f"klom_{split}"], row[f"klom_{split}_p95"] = summary["mean"], summary["p95"]
        rows[label] = row
    return rows


def main() -> None:
    overrides = sys.argv[1:]
    rows = reference_klom(overrides)
    columns = [f"klom_{s}{suffix}" for s in SPLITS for suffix in ("", "_p95")]
    print(f"KLoM reference rows for: {' '.join(overrides) or '(defaults)'}")
    print("| reference | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
