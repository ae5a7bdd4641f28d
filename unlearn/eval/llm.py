"""Language-model unlearning metrics (TOFU lineage) as pure functions on per-example numbers.

Every input is a mean token NLL (the per-token normalisation TOFU uses), so answers of different lengths
compare: the per-token probability of an answer is exp(−mean NLL). The LOSS membership attack is shared
with classification (`unlearn.eval.mia.loss_attack_auc`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from unlearn.eval.checks import as_array


def answer_probability(nll: np.ndarray) -> float:
    """Mean over examples of exp(−mean token NLL): the geometric-mean probability per answer token."""
    nll = np.asarray(nll, dtype=np.float64)
    return float(np.mean(np.exp(-nll))) if nll.size else float("nan")


def truth_ratios(paraphrased_nll: np.ndarray, perturbed_nll: np.ndarray) -> np.ndarray:
    """Per example R = P(perturbed) / P(paraphrased), both per-token normalised.

    P(perturbed) is the geometric mean over the K false answers, so R = exp(NLL_para − mean_k NLL_k):
    R < 1 prefers the true answer, R ≈ 1 is indifferent, R > 1 prefers the false ones.
    `paraphrased_nll` is (N,), `perturbed_nll` (N, K); a (K, N) matrix is refused (ShapeError), not reshaped.
    """
    dims: dict[str, int] = {}
    para = as_array(paraphrased_nll, "paraphrased_nll", ("N",), dims)
    pert = as_array(perturbed_nll, "perturbed_nll", ("N", "K"), dims)
    return np.exp(para - pert.mean(axis=1))


def truth_preference(ratios: np.ndarray) -> float:
    """Mean of max(0, 1 − R) (TOFU's retain-set form): 0 when the model does not prefer the true answer over
    the false ones (as a model that never saw the facts, whose R scatters around 1), toward 1 when it is sure
    of the true one. Over-unlearning (R > 1) also reads 0; forget quality tells it apart from the oracle."""
    ratios = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - ratios))) if ratios.size else float("nan")


def ks_forget_quality(ratios: np.ndarray, reference_ratios: np.ndarray) -> float:
    """TOFU's forget quality: the p-value of a two-sample KS test between a model's forget-set truth ratios
    and the retrained oracle's (1.0 for identical distributions; tiny when they differ)."""
    from scipy.stats import ks_2samp

    ratios, reference = np.asarray(ratios, dtype=np.float64), np.asarray(reference_ratios, dtype=np.float64)
    if ratios.size == 0 or reference.size == 0:
        return float("nan")
    return float(ks_2samp(ratios, reference).pvalue)


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example ROUGE-L recall of each prediction against its reference (rouge-score, Porter stemming as in
    TOFU): the share of the reference's words recovered in order."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _rouge_l_scorer()
    return np.array([scorer.score(ref, pred)["rougeL"].recall for pred, ref in zip(predictions, references)],
                    dtype=np.float64)


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    """One scorer per process: building one loads the stemmer and logs a line each time."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
