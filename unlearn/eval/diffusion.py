"""Metrics of class-conditional generators as pure functions on arrays: how often a judge classifier
recognises the class a generation was conditioned on, and the Fréchet distance between feature sets."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from unlearn.eval.checks import all_finite, as_array


def class_hit_rate(predicted: np.ndarray, conditioned: np.ndarray, classes: Sequence[int]) -> float:
    """Percent of the generations conditioned on `classes` that the judge assigns to that very class,
    averaged over the classes (so each class weighs the same whatever its number of samples).
    `predicted` and `conditioned` are (n,) class indices; NaN when no generation has one of `classes`."""
    dims: dict[str, int] = {}
    predicted = as_array(predicted, "predicted", ("n",), dims, dtype=np.int64)
    conditioned = as_array(conditioned, "conditioned", ("n",), dims, dtype=np.int64)
    rates = [np.mean(predicted[conditioned == c] == c) for c in classes if np.any(conditioned == c)]
    if not rates:
        return float("nan")
    return float(100.0 * np.mean(rates))


def gaussian_frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), the squared 2-Wasserstein distance of two Gaussians.

    tr((Σa Σb)^½) is computed as tr((Σa^½ Σb Σa^½)^½), a symmetric PSD matrix, by eigen-decomposition; this
    stays real and stable where a general matrix square root of Σa Σb picks up imaginary round-off.
    Means are (d,), covariances (d, d); NaN when any input is not finite.
    """
    dims: dict[str, int] = {}
    mean_a, mean_b = as_array(mean_a, "mean_a", ("d",), dims), as_array(mean_b, "mean_b", ("d",), dims)
    cov_a = as_array(np.atleast_2d(cov_a), "cov_a", ("d", "d"), dims)
    cov_b = as_array(np.atleast_2d(cov_b), "cov_b", ("d", "d"), dims)
    if not all_finite(mean_a, mean_b, cov_a, cov_b):
        return float("nan")
    eigval, eigvec = np.linalg.eigh(cov_a)
    root_a = (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
    return float(max(distance, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between two sets of feature vectors (rows), each summarised by mean and covariance
    (FID's formula, here in whatever feature space the rows come from). (n_a, d) and (n_b, d) -> float; NaN
    with fewer than 2 rows on a side or any non-finite feature."""
    dims: dict[str, int] = {}
    a, b = as_array(features_a, "features_a", (None, "d"), dims), as_array(features_b, "features_b", (None, "d"), dims)
    if len(a) < 2 or len(b) < 2 or not all_finite(a, b):
        return float("nan")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
