"""Language-model unlearning metrics (TOFU lineage) as pure functions on per-example numbers.

Every input is a mean token NLL (the per-token normalisation TOFU uses), so answers of different lengths
compare: the per-token probability of an answer is exp(−mean NLL). The LOSS membership attack is shared
with classification (`unlearn.eval.mia.loss_attack_auc`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from unlearn.errors import ShapeError
from unlearn.eval.checks import as_array, nan_if_not_finite
from unlearn.eval.mia import attack_roc


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


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str], stem: bool = True) -> np.ndarray:
    """Per-example ROUGE-L recall of each prediction against its reference (rouge-score): the share of the
    reference's words recovered in order. TOFU's score (Porter stemming on, as TOFU and open-unlearning)."""
    return _rouge_l(predictions, references, stem, "recall")


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], stem: bool = False) -> np.ndarray:
    """Per-example ROUGE-L F1 of each prediction against its reference (rouge-score), which weighs precision as
    well as recall: MUSE's VerbMem and KnowMem score (Shi et al. 2024). MUSE's own scorer does not stem
    (`use_stemmer=False`), so neither does this by default; open-unlearning's MUSE port stems and differs."""
    return _rouge_l(predictions, references, stem, "fmeasure")


def _rouge_l(predictions: Sequence[str], references: Sequence[str], stem: bool, measure: str) -> np.ndarray:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = _rouge_l_scorer(bool(stem))
    return np.array([getattr(scorer.score(ref, pred)["rougeL"], measure) for pred, ref in zip(predictions, references)],
                    dtype=np.float64)


@nan_if_not_finite
def multiple_choice_accuracy(choice_logprobs: np.ndarray, answers: np.ndarray) -> float:
    """Share of questions whose highest-scoring choice is the right one (WMDP, MMLU: chance 1/K).

    choice_logprobs: (N, K) log-likelihood of each choice's continuation given the question (higher = preferred;
    ties go to the first); answers: (N,) integer index of the right choice in 0..K−1. NaN on non-finite input or
    no questions. Source: Li et al. 2024 (WMDP), scored as lm-evaluation-harness's `acc`."""
    dims: dict[str, int] = {}
    scores = as_array(choice_logprobs, "choice_logprobs", ("N", "K"), dims)
    answers = as_array(answers, "answers", ("N",), dims)
    if scores.size == 0:
        return float("nan")
    if np.any((answers < 0) | (answers >= scores.shape[1]) | (answers != np.round(answers))):
        raise ValueError(f"answers must be choice indices in 0..{scores.shape[1] - 1}")
    return float(np.mean(scores.argmax(axis=1) == answers.astype(np.int64)))


@lru_cache(maxsize=2)
def _rouge_l_scorer(stem: bool):
    """One scorer per stemming setting and process: building one loads the stemmer and logs a line each time."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem)


# ---- truth ratio summaries, model utility ------------------------------------------------------------
def truth_ratio_forget(ratios: np.ndarray) -> float:
    """TOFU's forget-set summary mean(min(R, 1/R)) of per-item truth ratios R (N,): 1 when the model cannot
    tell the true answer from the false ones (as one that never saw them), toward 0 when it clearly prefers
    either. Source: TOFU (Maini et al. 2024), reference/llm.md."""
    ratios = as_array(ratios, "ratios", ("N",))
    if ratios.size == 0 or not np.all(np.isfinite(ratios)) or np.any(ratios <= 0):
        return float("nan")
    return float(np.mean(np.minimum(ratios, 1.0 / ratios)))


@nan_if_not_finite
def normalised_probability(correct_nll: np.ndarray, wrong_nll: np.ndarray) -> float:
    """TOFU's probability on real authors / world facts: mean over items of P_c / (P_c + Σ_k P_k), each P the
    per-token probability exp(−mean NLL) of the correct (N,) and the K wrong (N, K) answers."""
    dims: dict[str, int] = {}
    correct = np.exp(-as_array(correct_nll, "correct_nll", ("N",), dims))
    wrong = np.exp(-as_array(wrong_nll, "wrong_nll", ("N", "K"), dims))
    if correct.size == 0:
        return float("nan")
    return float(np.mean(correct / (correct + wrong.sum(axis=1))))


def model_utility(components: dict[str, float]) -> float:
    """Harmonic mean of utility components on [0, 1] (TOFU's model utility): 0 if any is 0, NaN if any is NaN."""
    values = np.array(list(components.values()), dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return float("nan")
    if np.any(values <= 0):
        return 0.0
    return float(len(values) / np.sum(1.0 / values))


# ---- memorisation of the answer tokens -----------------------------------------------------------------
def exact_memorization(correct: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per item, the share of answer positions whose argmax prediction equals the label.

    correct: (N, T) bool, argmax == label per position; mask: (N, T) bool, True on answer positions.
    Returns (N,) on [0, 1] (NaN for an item with no answer position). Source: Tirumala et al. 2022 / MUSE."""
    dims: dict[str, int] = {}
    correct = as_array(correct, "correct", ("N", "T"), dims, dtype=bool)
    mask = as_array(mask, "mask", ("N", "T"), dims, dtype=bool)
    counts = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (correct & mask).sum(axis=1) / counts, np.nan)


def extraction_strength(correct: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per item 1 − k/n for the smallest k such that the argmax predictions match the labels on the whole
    answer suffix k..n−1 (n answer positions): 1 if the whole answer is predicted, 0 if its last token is not.

    correct, mask: (N, T) bool as in `exact_memorization`; answer positions need not be contiguous in T.
    Returns (N,) on [0, 1]. Source: Carlini et al. 2021's extraction, as open-unlearning reports it."""
    dims: dict[str, int] = {}
    correct = as_array(correct, "correct", ("N", "T"), dims, dtype=bool)
    mask = as_array(mask, "mask", ("N", "T"), dims, dtype=bool)
    out = np.full(len(correct), np.nan)
    for i, (hit, keep) in enumerate(zip(correct, mask)):
        answer = hit[keep]
        if answer.size:
            wrong = np.flatnonzero(~answer)
            k = 0 if wrong.size == 0 else int(wrong[-1]) + 1
            out[i] = 1.0 - k / answer.size
    return out


# ---- membership inference (forget vs holdout) ------------------------------------------------------------
# Every score is per item with "higher = less member-like"; `mia_auc` is the AUC of telling forget (members
# of the original's training set) from holdout (never trained): the original ≈ 1, a retrained model ≈ 0.5,
# an over-unlearned one → 0 (its forget items look less familiar than text it never saw).

def min_k_scores(token_scores: np.ndarray, mask: np.ndarray, k: float = 0.4) -> np.ndarray:
    """Min-K% (Shi et al. 2024): −mean of the lowest ⌊k·n⌋ (at least one) of an item's n per-token scores, the
    count rounded down as the Min-K% authors, MUSE and open-unlearning do.

    token_scores: (N, T) per-token log-probabilities of the labels (Min-K%), or their standardised form
    (Min-K%++, see `min_k_plus_plus_tokens`); mask: (N, T) bool answer positions; 0 < k <= 1.
    Returns (N,), higher = less member-like (NaN for an item with no answer position)."""
    if not 0 < k <= 1:
        raise ValueError(f"Min-K% needs 0 < k <= 1, got {k}")
    dims: dict[str, int] = {}
    scores = as_array(token_scores, "token_scores", ("N", "T"), dims)
    mask = as_array(mask, "mask", ("N", "T"), dims, dtype=bool)
    out = np.full(len(scores), np.nan)
    for i, (row, keep) in enumerate(zip(scores, mask)):
        values = np.sort(row[keep])
        if values.size:
            out[i] = -values[: max(1, int(k * values.size))].mean()
    return out


def min_k_plus_plus_tokens(label_logprob: np.ndarray, vocab_mean: np.ndarray, vocab_var: np.ndarray) -> np.ndarray:
    """Min-K%++'s per-token z_t = (log p(y_t) − μ_t)/σ_t, μ_t and σ_t² the mean and variance of log p(v) over
    the vocabulary under p (Zhang et al. 2025). All inputs (N, T); returns (N, T) (0 where σ_t = 0)."""
    dims: dict[str, int] = {}
    logp = as_array(label_logprob, "label_logprob", ("N", "T"), dims)
    mu = as_array(vocab_mean, "vocab_mean", ("N", "T"), dims)
    sigma = np.sqrt(np.maximum(as_array(vocab_var, "vocab_var", ("N", "T"), dims), 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sigma > 0, (logp - mu) / np.where(sigma > 0, sigma, 1.0), 0.0)


def zlib_scores(nll: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """zlib attack (Carlini et al. 2021): mean token NLL (N,) divided by the zlib-compressed length in bytes
    of each answer's UTF-8 text. Returns (N,), higher = less member-like."""
    import zlib

    nll = as_array(nll, "nll", ("N",))
    if len(texts) != len(nll):
        raise ShapeError(f"texts must hold one answer per nll entry ({len(nll)}), got {len(texts)}")
    sizes = np.array([len(zlib.compress(t.encode("utf-8"))) for t in texts], dtype=np.float64)
    return nll / sizes


@nan_if_not_finite
def mia_auc(forget_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """AUC of an attack that calls an item a member when its score is low (scores: higher = less member-like):
    the probability that a random forget item scores below a random holdout item (ties count ½)."""
    forget = as_array(forget_scores, "forget_scores", ("N",))
    holdout = as_array(holdout_scores, "holdout_scores", ("M",))
    return attack_roc(-forget, -holdout)["auc"]


def privleak(auc_model: float, auc_retrain: float) -> float:
    """PrivLeak in percent exactly as MUSE (Shi et al. 2024) and open-unlearning report it.

    Inputs are AUCs in this module's orientation (`mia_auc`: telling forget from holdout, original ≈ 1).
    MUSE labels the forget set as the non-members, so its AUC is 1 − ours, and
    PrivLeak = (AUC_model − AUC_retrain) / AUC_retrain × 100 in MUSE's orientation, i.e.
    (auc_retrain − auc_model) / (1 − auc_retrain) × 100 here.
    Sign (MUSE's): 0 = as private as retraining; **negative = under-unlearned** (the forget set still looks
    familiar; a model trained on it reads about −100); positive = over-unlearned. NaN when the retrain's MUSE AUC
    is 0 or an input is not finite."""
    if not (np.isfinite(auc_model) and np.isfinite(auc_retrain)) or auc_retrain >= 1:
        return float("nan")
    muse_model, muse_retrain = 1.0 - auc_model, 1.0 - auc_retrain
    return float((muse_model - muse_retrain) / muse_retrain * 100.0)
