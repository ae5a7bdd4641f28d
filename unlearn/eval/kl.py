"""KL-to-retrain: how far the unlearned model's predictive distribution is from the oracle's, per example."""
from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from unlearn.eval.checks import as_array

DEFAULT_EPS = 1e-12


def _as_distributions(probs: np.ndarray, name: str, dims: dict[str, int]) -> np.ndarray:
    probs = as_array(probs, name, ("n", "C"), dims)
    if np.any(probs < 0):
        raise ValueError(f"{name} must hold non-negative probabilities")
    return probs


def _smooth(probs: np.ndarray, eps: float) -> np.ndarray:
    clipped = np.maximum(probs, eps)
    return clipped / clipped.sum(axis=1, keepdims=True)


def kl_to_reference(unlearned_probs: np.ndarray, oracle_probs: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Per-example KL(p_unlearned ‖ p_oracle) in nats.

    Args:
        unlearned_probs: (n, C) predictive distributions of the unlearned model.
        oracle_probs: (n, C) predictive distributions of the oracle (retrained) model on the same examples.
            With several oracles, pass their mean distribution (the oracle ensemble's prediction), or call
            once per oracle and average the results — the lead decides; both are (n, C) here.
        eps: zero handling. Both distributions are clipped from below at `eps` and renormalised, the same
            operation on both, so identical inputs give exactly 0 and a class the oracle gives probability 0
            but the unlearned model does not costs a large finite p·log(p/eps) instead of infinity. The
            smoothing moves any other value by O(C·eps).
    Returns:
        (n,) non-negative KL values; NaN for an example where either distribution is not finite (a diverged
        model). Order matters: KL is not symmetric.
    Raises:
        ShapeError if the shapes differ from (n, C) and (n, C).
    """
    dims: dict[str, int] = {}
    p = _as_distributions(unlearned_probs, "unlearned_probs", dims)
    q = _as_distributions(oracle_probs, "oracle_probs", dims)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    finite = np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1)
    out = np.full(len(p), np.nan)
    out[finite] = rel_entr(_smooth(p[finite], eps), _smooth(q[finite], eps)).sum(axis=1)
    return out


def summarize(values: np.ndarray, percentile: float = 95.0) -> dict[str, float]:
    """Mean and a high percentile of per-example divergences (the tail is where unlearning fails).

    Returns {"mean": ..., "p<percentile>": ...}, e.g. {"mean": 0.1, "p95": 0.4}; NaNs for an empty array
    or one holding a NaN. `values` is (n,).
    """
    values = as_array(values, "values", (None,))
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    key = f"p{percentile:g}"
    if values.size == 0:
        return {"mean": float("nan"), key: float("nan")}
    return {"mean": float(values.mean()), key: float(np.percentile(values, percentile))}
