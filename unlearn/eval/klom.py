"""KLoM [Attribute-to-Delete]: per-example KL between the margin distributions of unlearned models and oracles.

Train N oracles (retrained without the forget set) and N unlearned models (the method applied to N originals).
For every example, the N margins of each group are two samples of a distribution over models; KLoM histograms
both over one shared range and takes KL(unlearned ‖ oracle). Report it on forget, retain and validation
points, usually through a high percentile (`unlearn.eval.kl.summarize`).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from unlearn.errors import ShapeError
from unlearn.eval.checks import as_array


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Margin = logit of the true class − logsumexp of the other logits (= log p_y − log(1 − p_y)).

    Args:
        logits: (..., C) with C >= 2, e.g. (n, C) for one model or (N_models, n, C) for many.
        labels: integer true classes, broadcastable to logits.shape[:-1] (e.g. (n,) for both cases above).
    Returns:
        logits.shape[:-1] float64 margins. This is also LiRA's logit-scaled confidence, computed stably.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise ShapeError(f"logits must have shape (..., C) with C >= 2 classes, got {logits.shape}")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ShapeError(f"labels must be integers, got dtype {labels.dtype}")
    num_classes = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ShapeError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    try:
        labels = np.broadcast_to(labels, logits.shape[:-1])[..., None]
    except ValueError:
        raise ShapeError(f"labels must have a shape broadcastable to {logits.shape[:-1]} (logits.shape[:-1]), "
                         f"got {labels.shape}") from None
    true_logit = np.take_along_axis(logits, labels, axis=-1)[..., 0]
    others = logits.copy()
    np.put_along_axis(others, labels, -np.inf, axis=-1)
    return true_logit - logsumexp(others, axis=-1)


def _histograms(values: np.ndarray, low: np.ndarray, width: np.ndarray, bins: int) -> np.ndarray:
    """(N, n) samples -> (n, bins) frequencies, bin b covering [low + b·width, low + (b+1)·width), last bin closed."""
    index = np.floor((values - low) / width).astype(np.int64)
    index = np.clip(index, 0, bins - 1)  # the maximum lands exactly on the right edge: it belongs to the last bin
    n_models, n_examples = values.shape
    flat = (np.arange(n_examples) * bins + index).reshape(-1)
    counts = np.bincount(flat, minlength=n_examples * bins).reshape(n_examples, bins)
    return counts / n_models


def klom(unlearned_margins: np.ndarray, oracle_margins: np.ndarray, bins: int = 20, floor: float = 1e-5) -> np.ndarray:
    """Per-example KLoM = KL(unlearned ‖ oracle) between histograms of margins over models.

    Args:
        unlearned_margins: (N_unlearned, n_examples) margins of each unlearned model on each example.
        oracle_margins: (N_oracles, n_examples) margins of each oracle on the same examples. The two model
            counts may differ.
        bins: equal-width bins over the per-example range [min, max] of both groups' values together.
        floor: empty oracle bins are raised to `floor`, so unlearned mass where no oracle landed costs
            p·log(p/floor) (at most log(1/floor) ≈ 11.5 nats in total) instead of infinity. Empty unlearned
            bins contribute 0 (0·log 0 = 0). Nothing is renormalised afterwards: the floor moves a value by
            O(bins·floor) at most, and identical histograms still give exactly 0.
    Returns:
        (n_examples,) KL values in nats; 0 when an example's unlearned and oracle margins are identically
        distributed over the bins (e.g. all values equal); NaN for an example with a non-finite margin.
    Raises:
        ShapeError unless both inputs are (N, n_examples) with N >= 1 and the same n_examples.

    The order is KL(unlearned ‖ oracle), as the paper and the public scripts checked define it.
    """
    dims: dict[str, int] = {}
    unlearned = as_array(unlearned_margins, "unlearned_margins", (None, "n"), dims)
    oracle = as_array(oracle_margins, "oracle_margins", (None, "n"), dims)
    if unlearned.shape[0] == 0 or oracle.shape[0] == 0:
        raise ShapeError(f"KLoM needs at least one unlearned model and one oracle, got {unlearned.shape} and "
                         f"{oracle.shape}")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor must lie in (0, 1), got {floor}")
    finite = np.isfinite(unlearned).all(axis=0) & np.isfinite(oracle).all(axis=0)
    if not finite.all():
        out = np.full(unlearned.shape[1], np.nan)
        if finite.any():
            out[finite] = klom(unlearned[:, finite], oracle[:, finite], bins, floor)
        return out
    bins = int(bins)
    low = np.minimum(unlearned.min(axis=0), oracle.min(axis=0))
    high = np.maximum(unlearned.max(axis=0), oracle.max(axis=0))
    # A zero-width range (every value equal) is one bin holding everything: both histograms agree.
    width = np.where(high > low, (high - low) / bins, 1.0)
    p = _histograms(unlearned, low, width, bins)
    q = np.maximum(_histograms(oracle, low, width, bins), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return terms.sum(axis=1)
