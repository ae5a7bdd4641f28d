"""Classification metrics as pure functions on arrays (percentages, as the papers print them)."""
from __future__ import annotations

import numpy as np

from unlearn.eval.checks import all_finite, as_array


def _probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dims: dict[str, int] = {}
    return as_array(probs, "probs", ("N", "C"), dims), as_array(labels, "labels", ("N",), dims, dtype=np.int64)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of (N, C) probabilities (or logits) against (N,) integer labels.
    NaN when N = 0 or any output is not finite (a diverged model has no accuracy)."""
    probs, labels = _probs_labels(probs, labels)
    if len(labels) == 0 or not all_finite(probs):
        return float("nan")
    return float(100.0 * np.mean(probs.argmax(axis=1) == labels))


def unlearning_accuracy(forget_probs: np.ndarray, forget_labels: np.ndarray) -> float:
    """UA = 100 − accuracy on the forget set (percent); shapes as `accuracy`."""
    return 100.0 - accuracy(forget_probs, forget_labels)


def true_label_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) softmax probability of each example's true label, from (N, C) probs and (N,) labels: the MIA's
    one feature."""
    probs, labels = _probs_labels(probs, labels)
    return probs[np.arange(len(labels)), labels]
