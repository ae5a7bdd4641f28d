"""Membership-inference metrics (SalUn's MIA-Efficacy and friends)."""
from __future__ import annotations

import numpy as np

from unlearn.errors import ShapeError
from unlearn.eval.checks import all_finite, as_array

NAN_ROC = {"auc": float("nan"), "tpr_at_fpr": float("nan")}


def mia_efficacy(member_scores: np.ndarray, nonmember_scores: np.ndarray, target_scores: np.ndarray) -> float:
    """Percent of `target` examples an SVC attack calls non-members (higher = more forgotten).

    The attack (RBF SVC, C=3, gamma='auto', as in the SalUn reference) is fit on one feature per example:
    members (label 1, e.g. retain examples) against non-members (label 0, e.g. the test set).
    Each input is (n,) — one feature per example — or (n, d), with the same d for all three.
    Returns NaN when a set is empty or any score is NaN or infinite (a diverged model).
    """
    from sklearn.svm import SVC

    dims: dict[str, int] = {}
    members, nonmembers, target = (_features(x, name, dims) for x, name in (
        (member_scores, "member_scores"), (nonmember_scores, "nonmember_scores"), (target_scores, "target_scores")))
    if 0 in (len(members), len(nonmembers), len(target)) or not all_finite(members, nonmembers, target):
        return float("nan")
    features = np.concatenate([members, nonmembers])
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float(100.0 * np.mean(attack.predict(target) == 0))


def _features(values: np.ndarray, name: str, dims: dict[str, int]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    return as_array(array, name, (None, "d"), dims)


# ---------------------------------------------------------------------------------------------------------
# Attack features (one value per example; lower entropy / modified entropy = more member-like).

LOG_FLOOR = 1e-30  # probabilities are clipped here before a log, so a saturated softmax gives a finite feature


def _probs_and_labels(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    dims: dict[str, int] = {}
    probs = as_array(probs, "probs", ("N", "C"), dims)
    if probs.shape[1] < 2:
        raise ShapeError(f"probs must be (N, C) with C >= 2 classes, got {probs.shape}")
    if labels is None:
        return probs, None
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(f"labels must be integers, got {labels.dtype}")
    labels = as_array(labels, "labels", ("N",), dims, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ShapeError(f"labels must lie in [0, {probs.shape[1]})")
    return probs, labels


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy −Σ_i p_i log p_i (nats) of each row of (n, C) probs -> (n,); 0·log 0 = 0."""
    from scipy.special import entr

    probs, _ = _probs_and_labels(probs)
    return entr(probs).sum(axis=1)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's Mentr: −(1 − p_y)·log p_y − Σ_{i≠y} p_i·log(1 − p_i), per example -> (n,).

    Unlike plain entropy it uses the label: a confident correct prediction scores ~0, a confident wrong one
    is large. This is the intended formula; the SalUn reference code is buggy (it indexes with the whole
    label vector and uses log p_i where log(1 − p_i) belongs). Probabilities and 1 − p are clipped at
    LOG_FLOOR before the log.
    """
    probs, labels = _probs_and_labels(probs, labels)
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    wrong = -probs * np.log(np.maximum(1.0 - probs, LOG_FLOOR))
    wrong[rows, labels] = 0.0
    return -(1.0 - p_true) * np.log(np.maximum(p_true, LOG_FLOOR)) + wrong.sum(axis=1)


def logit_scaled_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's statistic φ = log p_y − log Σ_{i≠y} p_i from (n, C) probs -> (n,).

    Prefer `unlearn.eval.klom.margins(logits, labels)`, the same quantity computed from logits: float32
    softmax saturates at p_y ≈ 1 − 6e-8, capping φ near 16.6 here.
    """
    probs, labels = _probs_and_labels(probs, labels)
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    p_other = probs.sum(axis=1) - p_true
    return np.log(np.maximum(p_true, LOG_FLOOR)) - np.log(np.maximum(p_other, LOG_FLOOR))


# ---------------------------------------------------------------------------------------------------------
# Threshold attacks scored by ROC.

def _scores(values: np.ndarray, name: str) -> np.ndarray:
    """Scores of any shape, flattened (all (model, example) pairs pool into one ROC)."""
    return np.asarray(values, dtype=np.float64).reshape(-1)


def attack_roc(positive_scores: np.ndarray, negative_scores: np.ndarray, target_fpr: float = 0.01) -> dict[str, float]:
    """AUC and TPR at `target_fpr` of an attack whose score is higher for positives (label 1).

    Returns {"auc": ..., "tpr_at_fpr": ...}; both NaN if either side is empty or holds a NaN (a diverged
    model; ±inf is a valid extreme score, e.g. an infinite loss). TPR at the target is the
    best TPR among the ROC's operating points whose FPR <= target_fpr (no interpolation), so with fewer
    than 1/target_fpr negatives it is the TPR at FPR = 0.
    """
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score, roc_curve

    positive = _scores(positive_scores, "positive_scores")
    negative = _scores(negative_scores, "negative_scores")
    if not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target_fpr must be in [0, 1], got {target_fpr}")
    if positive.size == 0 or negative.size == 0 or np.isnan(positive).any() or np.isnan(negative).any():
        return dict(NAN_ROC)
    labels = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    # Ranks give the same ROC as the raw scores and let infinite scores (e.g. an infinite loss) through.
    scores = rankdata(np.concatenate([positive, negative]))
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auc": float(roc_auc_score(labels, scores)), "tpr_at_fpr": float(tpr[fpr <= target_fpr].max())}


def tpr_at_fpr(positive_scores: np.ndarray, negative_scores: np.ndarray, target_fpr: float = 0.01) -> float:
    """TPR at `target_fpr` (see `attack_roc`)."""
    return attack_roc(positive_scores, negative_scores, target_fpr)["tpr_at_fpr"]


def loss_attack_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """AUC of the LOSS attack (lower loss = member): 1.0 perfectly separated, 0.5 indistinguishable.
    Losses (n_members,) and (n_nonmembers,); NaN if any loss is NaN."""
    return attack_roc(-_scores(member_losses, "member_losses"), -_scores(nonmember_losses, "nonmember_losses"))["auc"]


# ---------------------------------------------------------------------------------------------------------
# Per-example LiRA (Carlini et al.) adapted to unlearning (U-LiRA, Hayes et al. 2024).

def _model_by_example(stats: np.ndarray, name: str, min_models: int, dims: dict[str, int]) -> np.ndarray:
    stats = as_array(stats, name, (None, "n"), dims)
    if stats.shape[0] < min_models:
        raise ShapeError(f"{name} must be (N_models, n) with N_models >= {min_models}, got {stats.shape}")
    return stats


def _gaussian(stats: np.ndarray, global_variance: bool, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    mean = stats.mean(axis=0)
    var = stats.var(axis=0, ddof=1)
    if global_variance:
        var = np.full_like(var, var.mean())
    return mean, np.maximum(np.sqrt(var), min_std)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2.0 * np.pi)


def lira_scores(query_stats: np.ndarray, in_stats: np.ndarray, out_stats: np.ndarray,
                global_variance: bool = False, min_std: float = 1e-3) -> np.ndarray:
    """Per-example likelihood-ratio test: log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out).

    Args:
        query_stats: (M, n) statistic (e.g. logit-scaled confidence, `klom.margins`) of M query models on n
            target examples, or (n,) for one model.
        in_stats: (N_in, n) the statistic under models trained WITH each example (originals), N_in >= 2.
        out_stats: (N_out, n) the same under models trained WITHOUT it (oracles), N_out >= 2.
        global_variance: use one variance per group, averaged over examples, instead of per-example
            variances — LiRA's choice when there are few (< ~64) models per group.
        min_std: lower bound on each fitted standard deviation, so examples on which every model agrees
            (deterministic training) do not divide by zero.
    Returns:
        Scores with query_stats' shape; higher = more like the "in" models.
    """
    dims: dict[str, int] = {}
    in_stats = _model_by_example(in_stats, "in_stats", 2, dims)
    out_stats = _model_by_example(out_stats, "out_stats", 2, dims)
    query = np.asarray(query_stats, dtype=np.float64)
    query = as_array(query, "query_stats", ("n",) if query.ndim <= 1 else (None, "n"), dims)
    if not min_std > 0:
        raise ValueError(f"min_std must be > 0, got {min_std}")
    mean_in, std_in = _gaussian(in_stats, global_variance, min_std)
    mean_out, std_out = _gaussian(out_stats, global_variance, min_std)
    return _log_normal_pdf(query, mean_in, std_in) - _log_normal_pdf(query, mean_out, std_out)


def unlearning_lira(original_stats: np.ndarray, oracle_stats: np.ndarray, unlearned_stats: np.ndarray,
                    target_fpr: float = 0.01, global_variance: bool = False, min_std: float = 1e-3) -> dict[str, float]:
    """How distinguishable are unlearned models from oracles on the forget set? (per-example LiRA)

    The harness calls this once per method with, for the forget-set examples (columns):
        original_stats  (N_o, n): φ under the N originals (trained on all data: the "in" distribution),
        oracle_stats    (N_r, n): φ under the N oracles (retrained without the forget set: "out"),
        unlearned_stats (N_u, n): φ under the N unlearned models, row j made from original j (mod N_o),
    where φ = `unlearn.eval.klom.margins(logits, labels)` per model, and N_o, N_r >= 3.

    Positives (label 1) are the unlearned models' scores, negatives (label 0) the oracles' own scores. No
    query may be scored by a Gaussian fitted on itself or on the model it was made from, and all queries
    must meet fits of the same size: oracle k is scored without oracle k and original k mod N_o, unlearned
    model j without original j mod N_o and oracle j mod N_r — always N_o − 1 originals and N_r − 1
    oracles. All (model, example) pairs are pooled into one ROC.

    Returns {"auc": ..., "tpr_at_fpr": ...}. AUC 0.5 and TPR ≈ target_fpr: unlearned models look like
    oracles (ideal). AUC → 1: they still look like originals (under-unlearning). AUC < 0.5: they look
    *less* like originals than oracles do (over-unlearning, e.g. gradient ascent overshooting), which is
    distinguishable too — report |AUC − 0.5| if one number must rank both failure modes. NaN when any
    statistic is not finite.
    """
    dims: dict[str, int] = {}
    original = _model_by_example(original_stats, "original_stats", 3, dims)
    oracle = _model_by_example(oracle_stats, "oracle_stats", 3, dims)
    unlearned = _model_by_example(unlearned_stats, "unlearned_stats", 1, dims)
    if not all_finite(original, oracle, unlearned):
        return dict(NAN_ROC)
    n_originals, n_oracles = original.shape[0], oracle.shape[0]

    def score_without(original_k: int, oracle_k: int, query: np.ndarray) -> np.ndarray:
        return lira_scores(query, np.delete(original, original_k % n_originals, axis=0),
                           np.delete(oracle, oracle_k % n_oracles, axis=0), global_variance, min_std)

    negatives = np.stack([score_without(k, k, oracle[k]) for k in range(n_oracles)])
    positives = np.stack([score_without(j, j, unlearned[j]) for j in range(unlearned.shape[0])])
    return attack_roc(positives, negatives, target_fpr)
