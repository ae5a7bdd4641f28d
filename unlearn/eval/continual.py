"""Continual class forgetting (GS-LoRA, Zhao et al. CVPR 2024): accuracy per class group and the H-Mean."""
from __future__ import annotations

import numpy as np

from unlearn.eval.checks import as_array, nan_if_not_finite


@nan_if_not_finite
def class_group_accuracy(predictions: np.ndarray, labels: np.ndarray, classes) -> float:
    """Top-1 accuracy (percent) on the examples whose label is in `classes`.

    predictions, labels: shape (N,), integer class ids. NaN when no example belongs to `classes`."""
    dims: dict[str, int] = {}
    predictions = as_array(predictions, "predictions", ("N",), dims)
    labels = as_array(labels, "labels", ("N",), dims)
    chosen = np.isin(labels, np.asarray(list(classes), dtype=np.float64))
    if not chosen.any():
        return float("nan")
    return float(100.0 * np.mean(predictions[chosen] == labels[chosen]))


@nan_if_not_finite
def h_mean(drop_f: float, acc_r: float) -> float:
    """H-Mean = 2·Drop_f·Acc_r / (Drop_f + Acc_r), both in percent (GS-LoRA's continual-forgetting score).

    Drop_f = Acc_f before − Acc_f after the forgetting step; a negative drop (the forgotten classes got
    better) counts as 0. 0 when both terms are 0."""
    drop_f = max(float(drop_f), 0.0)
    acc_r = float(acc_r)
    if drop_f + acc_r <= 0:
        return 0.0
    return 2.0 * drop_f * acc_r / (drop_f + acc_r)
