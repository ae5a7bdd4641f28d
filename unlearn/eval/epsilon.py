"""The NeurIPS 2023 unlearning competition's score: per-example (ε, δ) estimates from threshold attacks.

For each forget example, N retrained models and N unlearned models each give one statistic — the
logit-scaled confidence φ = `unlearn.eval.klom.margins(logits, labels)`. Attacks try to tell the two
samples apart; each attack's false-positive and false-negative rates bound an ε (as in (ε, δ)-DP
hypothesis testing), the example's ε is the strongest attack's, and ε is turned into points that halve
every 0.5 nats. The choices below follow the competition's published scorer (checked against it):
- Attacks: (a) one threshold, "positive" = the group with the larger median, predicted positive iff
  φ >= t; (b) an interval, "positive" = the tighter group (the smaller spread, max − min), predicted
  positive iff l <= φ <= r. As in the scorer, the tighter group is found by starting from (a)'s positive
  group and swapping when its spread is >= the other's, so on an exact tie of spreads it is the group with
  the smaller median. The interval is limited in width and in place: r − l within `interval_slack` (2.0
  φ-units) of the tighter group's spread, and r within `interval_slack` of the tighter group's maximum.
  The scorer scans a fine grid of thresholds; here every distinct decision is enumerated exactly
  (endpoints at observed values): O(N²) per example.
- A group whose spread is under 1% of the other's is a near point mass that threshold attacks cannot
  certify with N samples (an attack that catches it has FNR = 0 and is discarded); the scorer gives such
  examples the worst ε, and so does this module (`min_spread_ratio`).
- Points: bin k = 1, 2, … covers ε ∈ [0.5(k−1), 0.5k) and earns H = 2/2^k (bin 1 -> 1, bin 2 -> 1/2, …),
  so F = mean H lies in [0, 1] and is 1 when every ε < 0.5. Bins run up to `max_epsilon`, by default
  ceil(ln(N − 1)): N samples per group cannot show a finite ε much above ln(N − 1). For the competition's
  512 models that is 7, i.e. bins starting at 0, 0.5, …, 6.5. ε at or beyond the last bin's end
  (including ∞, perfect separation) earns 0, as in the scorer (not the last bin's points).

Finite samples bias ε upwards: the maximum over many attacks on N samples finds spurious gaps. Two
independent sets of N(0, 1) samples (perfect "unlearning") score F ≈ 0.16–0.19 for N = 10…64 and ≈ 0.1
for N = 256, not 1; only identical samples score 1. Read F against that ceiling — e.g. F of held-out
retrained models scored against the other retrained models — rather than against 1.
"""
from __future__ import annotations

import math

import numpy as np

from unlearn.errors import ShapeError
from unlearn.eval.checks import as_array

DELTA = 1e-5
BIN_WIDTH = 0.5
MIN_SPREAD_RATIO = 0.01
INTERVAL_SLACK = 2.0


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """ε of each attack from its (FPR, FNR): max(log(1−δ−FPR) − log FNR, log(1−δ−FNR) − log FPR), >= 0.

    Both rates 0 (perfect separation) -> inf. Exactly one rate 0 -> NaN: the attack is discarded (with
    finite samples a zero rate means too few samples, not certainty). A term whose 1 − δ − rate <= 0
    cannot bound anything and counts as −inf; ε is clipped below at 0.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    if fpr.shape != fnr.shape:
        raise ShapeError(f"fpr and fnr must have the same shape, got {fpr.shape} and {fnr.shape}")
    if np.any((fpr < 0) | (fpr > 1) | (fnr < 0) | (fnr > 1)):
        raise ValueError("FPR and FNR must lie in [0, 1]")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(1 - delta - fpr > 0, np.log(1 - delta - fpr) - np.log(fnr), -np.inf)
        second = np.where(1 - delta - fnr > 0, np.log(1 - delta - fnr) - np.log(fpr), -np.inf)
    eps = np.maximum(np.maximum(first, second), 0.0)
    eps = np.where((fpr == 0) != (fnr == 0), np.nan, eps)
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)


def _count_at_most(sorted_values: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.searchsorted(sorted_values, points, side="right")


def _count_below(sorted_values: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.searchsorted(sorted_values, points, side="left")


# Rates are formed from integer counts so that "rate == 0" is exact for the discard rule.
def _threshold_rates(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "positive iff x >= t" for every t at an observed value."""
    cuts = np.unique(np.concatenate([positive, negative]))
    false_pos = negative.size - _count_below(negative, cuts)
    return false_pos / negative.size, _count_below(positive, cuts) / positive.size


def _interval_rates(positive: np.ndarray, negative: np.ndarray, width: float, slack: float | None,
                    anchor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of "positive iff l <= x <= r" for every distinct decision of an interval whose width is
    within `slack` of `width` and whose right edge is within `slack` of `anchor` (no limits if slack is
    None); endpoints are enumerated at observed values."""
    ends = np.unique(np.concatenate([positive, negative]))
    left, right = np.triu_indices(ends.size)
    if slack is not None:
        # Capturing exactly ends[left..right] takes a right edge R in [ends[right], after[right]) and a left
        # edge L in (before[left], ends[left]]. Keep the decision if some such R lies within slack of the
        # anchor while R − L lies within slack of the width.
        before = np.concatenate([[-np.inf], ends[:-1]])[left]
        after = np.concatenate([ends[1:], [np.inf]])[right]
        low = np.maximum(ends[right], anchor - slack)                         # smallest admissible R
        high = np.minimum(anchor + slack, ends[left] + width + slack)         # largest admissible R
        keep = (low <= high) & (low < after) & (before + width - slack < np.minimum(high, after))
        left, right = left[keep], right[keep]
    inside_pos = _count_at_most(positive, ends)[right] - _count_below(positive, ends)[left]
    inside_neg = _count_at_most(negative, ends)[right] - _count_below(negative, ends)[left]
    return inside_neg / negative.size, (positive.size - inside_pos) / positive.size


def example_epsilon(unlearned: np.ndarray, retrain: np.ndarray, delta: float = DELTA,
                    min_spread_ratio: float = MIN_SPREAD_RATIO, interval_slack: float | None = INTERVAL_SLACK) -> float:
    """ε of one example from its statistic under the unlearned models (N_u,) and retrained models (N_r,).

    The strongest surviving attack's ε; 0 when no attack survives the discard rule (no evidence, e.g.
    both samples are the same constant); inf for a near point mass (see the module docstring) or a
    perfect separation; NaN when a value is not finite (a diverged model). Inputs are (N_u,) and (N_r,).
    """
    unlearned = np.sort(as_array(unlearned, "unlearned", (None,)))
    retrain = np.sort(as_array(retrain, "retrain", (None,)))
    if min(unlearned.size, retrain.size) == 0:
        raise ShapeError(f"example_epsilon needs at least one value per group, got {unlearned.size} and {retrain.size}")
    if not np.isfinite(np.concatenate([unlearned, retrain])).all():
        return math.nan
    spread_u, spread_r = unlearned[-1] - unlearned[0], retrain[-1] - retrain[0]
    if max(spread_u, spread_r) > 0 and min(spread_u, spread_r) / max(spread_u, spread_r) < min_spread_ratio:
        return math.inf
    median_pos, median_neg = (retrain, unlearned) if np.median(retrain) > np.median(unlearned) else (unlearned, retrain)
    spread = lambda group: group[-1] - group[0]  # noqa: E731
    # The scorer's swap rule: the tighter group is the other one whenever the positive's spread is >= its own.
    peaky_pos, peaky_neg = (median_neg, median_pos) if spread(median_pos) >= spread(median_neg) else (median_pos, median_neg)
    fpr_t, fnr_t = _threshold_rates(median_pos, median_neg)
    fpr_i, fnr_i = _interval_rates(peaky_pos, peaky_neg, spread(peaky_pos), interval_slack, anchor=peaky_pos[-1])
    eps = epsilon_from_rates(np.concatenate([fpr_t, fpr_i]), np.concatenate([fnr_t, fnr_i]), delta)
    surviving = eps[~np.isnan(eps)]
    return float(surviving.max()) if surviving.size else 0.0


def _model_by_example(stats: np.ndarray, name: str, dims: dict[str, int]) -> np.ndarray:
    stats = as_array(stats, name, (None, "n"), dims)
    if stats.shape[0] < 2:
        raise ShapeError(f"{name} must be (N_models, n) with N_models >= 2, got {stats.shape}")
    return stats


def per_example_epsilon(unlearned_stats: np.ndarray, retrain_stats: np.ndarray, delta: float = DELTA,
                        min_spread_ratio: float = MIN_SPREAD_RATIO,
                        interval_slack: float | None = INTERVAL_SLACK) -> np.ndarray:
    """(N_u, n) unlearned and (N_r, n) retrained statistics -> (n,) ε per example (see `example_epsilon`)."""
    dims: dict[str, int] = {}
    unlearned = _model_by_example(unlearned_stats, "unlearned_stats", dims)
    retrain = _model_by_example(retrain_stats, "retrain_stats", dims)
    return np.array([example_epsilon(unlearned[:, i], retrain[:, i], delta, min_spread_ratio, interval_slack)
                     for i in range(unlearned.shape[1])])


def default_max_epsilon(n_models: int) -> float:
    """ceil(ln(N − 1)): about the largest finite ε that N samples per group can show."""
    if n_models < 3:
        raise ValueError(f"the ε score needs at least 3 models per group (got {n_models}): with N models the "
                          "bins run up to ceil(ln(N − 1)), which is 0 for N = 2")
    return float(math.ceil(math.log(n_models - 1)))


def example_score(epsilon: np.ndarray, max_epsilon: float, bin_width: float = BIN_WIDTH) -> np.ndarray:
    """Points H per example: 2/2^k for ε in bin k = 1 + floor(ε / bin_width), 0 from the last full bin's end on.
    (n,) ε -> (n,) points; a NaN ε (a diverged model) gives NaN points."""
    epsilon = as_array(epsilon, "epsilon", (None,))
    if np.any(epsilon < 0):
        raise ValueError("epsilon must be >= 0 (inf allowed)")
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    n_bins = math.floor(max_epsilon / bin_width + 1e-9)
    if n_bins < 1:
        raise ValueError(f"max_epsilon {max_epsilon} leaves no bin of width {bin_width}")
    with np.errstate(invalid="ignore"):
        k = np.floor(epsilon / bin_width) + 1
    points = np.where(k <= n_bins, 2.0 / np.exp2(np.minimum(k, n_bins)), 0.0)
    return np.where(np.isnan(epsilon), np.nan, points)


def forgetting_quality(unlearned_stats: np.ndarray, retrain_stats: np.ndarray, delta: float = DELTA,
                       max_epsilon: float | None = None, bin_width: float = BIN_WIDTH,
                       min_spread_ratio: float = MIN_SPREAD_RATIO,
                       interval_slack: float | None = INTERVAL_SLACK) -> float:
    """F = mean over forget examples of H(ε), in [0, 1]; 1 when no attack reaches ε = 0.5 on any example.

    Independent samples of one distribution score well below 1 at small N (see the module docstring).

    Args:
        unlearned_stats: (N_u, n) statistic of each forget example under each unlearned model.
        retrain_stats: (N_r, n) the same under each retrained model.
        max_epsilon: end of the last bin; None -> ceil(ln(min(N_u, N_r) − 1)) (the scorer's rule; it uses
            N_u, equal to N_r there).
    """
    dims: dict[str, int] = {}
    unlearned = _model_by_example(unlearned_stats, "unlearned_stats", dims)
    retrain = _model_by_example(retrain_stats, "retrain_stats", dims)
    if max_epsilon is None:
        max_epsilon = default_max_epsilon(min(unlearned.shape[0], retrain.shape[0]))
    eps = per_example_epsilon(unlearned, retrain, delta, min_spread_ratio, interval_slack)
    return float(example_score(eps, max_epsilon, bin_width).mean()) if eps.size else float("nan")


def unlearning_score(forgetting: float, ra_u: float, ra_r: float, ta_u: float, ta_r: float) -> float:
    """Final score = F × RA_u/RA_r × TA_u/TA_r: retain and test accuracy of the unlearned vs the retrained
    model(s), in any one unit (fractions or percentages)."""
    if not all(math.isfinite(v) for v in (forgetting, ra_u, ra_r, ta_u, ta_r)):
        return math.nan
    if not (ra_r > 0 and ta_r > 0):
        raise ValueError(f"the retrained model's retain and test accuracies must be > 0, got RA_r={ra_r}, TA_r={ta_r}")
    return float(forgetting * (ra_u / ra_r) * (ta_u / ta_r))
