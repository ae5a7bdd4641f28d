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
from unlearn.eval.mia import attack_roc, unlearning_lira
from unlearn.eval.rmia import RMIA_GAMMA, RMIA_OFFLINE_A, low_fpr_figures, rmia_scores

SPLITS = ("forget", "retain", "test")
LIRA_MIN_MODELS = 3  # each query is scored by fits that leave its own original and oracle out


RMIA_ROLES = {"unlearned": "rmia", "original": "rmia_original", "oracle": "rmia_oracle"}


def population_metric_names(utility_metrics: Sequence[str], low_fpr: Sequence[float] = (0.01,)) -> list[str]:
    names = [f"klom_{s}{suffix}" for s in SPLITS for suffix in ("", "_p95")] + ["lira_auc", "lira_tpr_1pct"]
    names += [k for prefix in RMIA_ROLES.values()
              for k in (f"{prefix}_auc", *low_fpr_figures(np.ones(1), np.ones(1), tuple(low_fpr), prefix))]
    return names + (["eps_forgetting", "eps_score"] if utility_metrics else [])


def rmia_metrics(logp: dict[str, list[dict[str, np.ndarray]]], low_fpr: Sequence[float] = (0.01,),
                 gamma: float = RMIA_GAMMA, offline_a: float | None = RMIA_OFFLINE_A) -> dict[str, float]:
    """RMIA (`unlearn.eval.rmia`) against member 0's unlearned model, original and oracle: targets are the forget
    set (positives: members of the original's training set) and the test split (negatives), the population samples
    z the val split, the references the other members' oracles (offline: they never trained on any target).
    logp[role][i][split]: log Pr(x | model i of that role) per example; needs ≥ 2 members and a val split.
    Returns `rmia[_role]_auc` and its TPRs at `low_fpr`: the unlearned model's AUC near the oracle's (≈ 0.5) means
    forgotten; near the original's, not."""
    names = {k: float("nan") for k in population_metric_names((), low_fpr) if k.startswith("rmia")}
    oracles = logp["oracle"]
    if len(oracles) < 2 or "val" not in oracles[0] or not len(oracles[0]["val"]):
        return names
    refs = {split: np.stack([member[split] for member in oracles[1:]]) for split in ("forget", "test", "val")}
    out = {}
    for role, prefix in RMIA_ROLES.items():
        target = logp[role][0]
        if not all(np.all(np.isfinite(target[s])) for s in ("forget", "test", "val")):
            continue  # a diverged member: its figures stay NaN
        score = {split: rmia_scores(target[split], refs[split], target["val"], refs["val"], gamma, offline_a)
                 for split in ("forget", "test")}
        out[f"{prefix}_auc"] = attack_roc(score["forget"], score["test"])["auc"]
        out |= low_fpr_figures(score["forget"], score["test"], tuple(low_fpr), prefix)
    return names | out


def klom_yardsticks(stats: dict[str, list[dict[str, np.ndarray]]]) -> dict[str, dict[str, float]]:
    """What KLoM reads for two models whose answer is known, to read a method's KLoM against (issue: a KLoM of
    10.5 means nothing without them). stats[role][i][split] as in `population_metrics`.

    Returns {"original": ..., "oracle": ...}, each {klom_<split>, klom_<split>_p95} in nats:
    - "original": KLoM(originals ‖ oracles), the same N against N: no unlearning at all, the level a method must
      come down from;
    - "oracle": KLoM(oracles[:N//2] ‖ oracles[N//2:]), independent retrains against each other: the level an exact
      retrain reaches, measured on half the models per side, so it reads higher than the N-vs-N figure would
      (NaN for N < 2).
    When the second is not below the first on a split, N models cannot tell the original from a retrain there."""
    stacked = {role: {s: np.stack([member[s] for member in members]) for s in SPLITS} for role, members in stats.items()}
    half = len(stats["oracle"]) // 2
    out: dict[str, dict[str, float]] = {"original": {}, "oracle": {}}
    for split in SPLITS:
        oracles = stacked["oracle"][split]
        pairs = {"original": (stacked["original"][split], oracles),
                 "oracle": (oracles[:half], oracles[half:]) if half else None}
        for role, pair in pairs.items():
            summary = summarize(klom(*pair)) if pair is not None else {"mean": float("nan"), "p95": float("nan")}
            out[role] |= {f"klom_{split}": summary["mean"], f"klom_{split}_p95": summary["p95"]}
    return out


def unresolved_splits(yardsticks: dict[str, dict[str, float]]) -> list[str]:
    """The splits on which independent retrains read no lower KLoM than the original does (`klom_yardsticks`):
    there the population is too small to separate an unlearned model from either."""
    return [s for s in SPLITS if not yardsticks["oracle"][f"klom_{s}"] < yardsticks["original"][f"klom_{s}"]]


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
