"""Metrics over populations of models: N originals, N oracles and the N unlearned models made from them.

Inputs are per-model dicts of per-example statistics (e.g. classification margins) for each split, and
per-model utility metrics; outputs are the row's population metrics.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unlearn.eval.epsilon import forgetting_quality
from unlearn.eval.kl import summarize
from unlearn.eval.klom import klom
from unlearn.eval.mia import unlearning_lira

SPLITS = ("forget", "retain", "test")
LIRA_MIN_MODELS = 3  # each query is scored by fits that leave its own original and oracle out


def population_metric_names(utility_metrics: Sequence[str]) -> list[str]:
    names = [f"klom_{s}{suffix}" for s in SPLITS for suffix in ("", "_p95")] + ["lira_auc", "lira_tpr_1pct"]
    return names + (["eps_forgetting", "eps_score"] if utility_metrics else [])


def population_metrics(stats: dict[str, list[dict[str, np.ndarray]]], utility: dict[str, list[dict[str, float]]],
                       utility_metrics: Sequence[str]) -> dict[str, float]:
    """stats[role][i][split]: statistic of each example under model i, role in original/oracle/unlearned.
    utility[role][i]: metrics of model i for role in unlearned/oracle (e.g. RA and TA)."""
    stacked = {role: {s: np.stack([member[s] for member in members]) for s in SPLITS} for role, members in stats.items()}
    out: dict[str, float] = {}
    for split in SPLITS:
        summary = summarize(klom(stacked["unlearned"][split], stacked["oracle"][split]))
        out[f"klom_{split}"], out[f"klom_{split}_p95"] = summary["mean"], summary["p95"]
    if len(stats["oracle"]) >= LIRA_MIN_MODELS:
        lira = unlearning_lira(stacked["original"]["forget"], stacked["oracle"]["forget"], stacked["unlearned"]["forget"])
        out["lira_auc"], out["lira_tpr_1pct"] = lira["auc"], lira["tpr_at_fpr"]
    else:
        out["lira_auc"] = out["lira_tpr_1pct"] = float("nan")
    if utility_metrics:
        quality = forgetting_quality(stacked["unlearned"]["forget"], stacked["oracle"]["forget"])
        mean = lambda role, name: float(np.mean([m[name] for m in utility[role]]))  # noqa: E731
        ratios = [mean("unlearned", name) / mean("oracle", name) for name in utility_metrics]
        out["eps_forgetting"] = quality
        out["eps_score"] = float(quality * np.prod(ratios))
    return out
