"""Metrics of concept erasure in text-to-image models, as pure functions on the judge's labels.

UnlearnCanvas [Zhang et al., 2024] scores erasure by classifying generations on each axis: UA (unlearning
accuracy) = % of the target concept's generations *not* classified as the target; IRA (in-domain retain) =
accuracy on the other values of the same axis; CRA (cross-domain retain) = accuracy on the other axes. Six-CD
[Ren et al., 2024] adds that the rest of a target prompt must survive (in-prompt retain), and EraseBench/HUB
the damage to near concepts (neighbour retain, here `retain_accuracy` on the neighbour's generations). The
Fréchet distance in the judge's feature space is `unlearn.eval.diffusion.frechet_distance`.

Labels are integer values of one axis (judged and prompted); every function returns a percentage, NaN when
there is nothing to score or the input is not finite, and raises ShapeError on shapes other than documented.
"""
from __future__ import annotations

import numpy as np

from unlearn.eval.checks import as_array, nan_if_not_finite


@nan_if_not_finite
def unlearning_accuracy(judged: np.ndarray, concept: int) -> float:
    """UA: percent of the generations of target prompts (judged labels, shape (N,)) that the judge does not
    assign to `concept`. NaN for N = 0."""
    judged = as_array(judged, "judged", ("N",))
    if len(judged) == 0:
        return float("nan")
    return float(100.0 * np.mean(judged != concept))


@nan_if_not_finite
def retain_accuracy(judged: np.ndarray, prompted: np.ndarray) -> float:
    """Percent of generations the judge assigns to the value their prompt asked for, averaged per prompted
    value (each value weighs the same whatever its number of samples). `judged`, `prompted`: shape (N,).
    IRA, the neighbour retain and each axis of CRA / the in-prompt retain. NaN for N = 0."""
    dims: dict[str, int] = {}
    judged = as_array(judged, "judged", ("N",), dims)
    prompted = as_array(prompted, "prompted", ("N",), dims)
    if len(judged) == 0:
        return float("nan")
    return float(100.0 * np.mean([np.mean(judged[prompted == v] == v) for v in np.unique(prompted)]))


@nan_if_not_finite
def cross_axis_accuracy(judged: np.ndarray, prompted: np.ndarray) -> float:
    """Mean over axes (columns) of `retain_accuracy`: CRA on non-target prompts, the in-prompt retain on target
    prompts (the axes other than the erased one). `judged`, `prompted`: shape (N, A). NaN for N = 0 or A = 0."""
    dims: dict[str, int] = {}
    judged = as_array(judged, "judged", ("N", "A"), dims)
    prompted = as_array(prompted, "prompted", ("N", "A"), dims)
    if judged.size == 0:
        return float("nan")
    return float(np.mean([retain_accuracy(judged[:, a], prompted[:, a]) for a in range(judged.shape[1])]))
