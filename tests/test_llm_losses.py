"""Pure LLM losses, the answer reduction, WAGLE scores and the LLM metric functions on hand-computed values."""
import math
import zlib

import numpy as np
import pytest
import torch

from unlearn.errors import ConfigError, ShapeError
from unlearn.eval.llm import (exact_memorization, extraction_strength, mia_auc, min_k_plus_plus_tokens, min_k_scores,
                              model_utility, normalised_probability, privleak, truth_ratio_forget, zlib_scores)
from unlearn.methods.flat import DIVERGENCES, flat_loss
from unlearn.methods.masks import top_fraction_mask, wagle_scores
from unlearn.methods.npo import npo_loss
from unlearn.methods.preference import preference_loss
from unlearn.tasks.answers import reduce_answer


# ---- the one reduction ------------------------------------------------------------------------------
def test_reduce_answer_on_a_hand_built_padded_batch():
    # Row 0: prompt token (masked), two answer tokens, padding. Row 1: one answer token, then padding whose
    # huge values (e.g. a pad id equal to eos) must never enter an average.
    values = torch.tensor([[7.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]])
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    assert reduce_answer(values, mask, "token_mean").item() == pytest.approx((2 + 3 + 4) / 3)
    assert reduce_answer(values, mask, "sequence_sum").tolist() == [5.0, 4.0]
    assert reduce_answer(values, mask, "sequence_mean").tolist() == [2.5, 4.0]
    # any leading shape, e.g. (B, K, T)
    assert reduce_answer(values[None], mask[None], "sequence_mean").shape == (1, 2)
    with pytest.raises(ValueError, match="reduction"):
        reduce_answer(values, mask, "mean")


# ---- NPO and the preference loss ----------------------------------------------------------------------
def test_npo_at_the_reference_is_two_over_beta_log_two():
    logp = torch.tensor([-3.0, -10.0])
    for beta in (0.1, 1.0, 4.5):
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2))


def test_npo_hand_value_and_gradient_tends_to_gradient_ascent():
    # β = 1, r = logp − logp_ref = 1: L = −2·log σ(−1) = 2·log(1 + e)
    assert npo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), 1.0).item() == pytest.approx(2 * math.log(1 + math.e))
    logp = torch.tensor([-1.0, -4.0, -0.5], requires_grad=True)
    ref = torch.tensor([-2.0, -3.0, -0.5])
    (grad,) = torch.autograd.grad(npo_loss(logp, ref, 1e-4), logp)
    (ga,) = torch.autograd.grad(logp.mean(), logp)  # GA minimises −NLL = mean log-prob
    assert torch.allclose(grad, ga, atol=1e-4)
    # self-limiting: once the forget answer is far less likely than under the reference, the gradient vanishes
    low = torch.tensor([-60.0], requires_grad=True)
    (g_low,) = torch.autograd.grad(npo_loss(low, torch.tensor([-1.0]), 1.0), low)
    assert 0 < g_low.item() < 1e-20


def test_preference_loss_refuses_non_positive_beta():
    for beta in (0.0, -1.0):
        with pytest.raises(ConfigError, match="beta > 0"):
            preference_loss(torch.zeros(2), beta)


# ---- FLAT ------------------------------------------------------------------------------------------
def test_flat_loss_hand_values():
    pe, pf = torch.tensor([0.5]), torch.tensor([0.2])
    assert flat_loss(pe, pf, "tv").item() == pytest.approx(-0.5 * math.tanh(0.5) + 0.5 * math.tanh(0.2))
    assert flat_loss(pe, pf, "kl").item() == pytest.approx(-0.5 + math.exp(0.2 - 1))
    assert flat_loss(pe, pf, "pearson").item() == pytest.approx(-0.5 + 0.2**2 / 4 + 0.2)
    # reverse KL: −g(P_e) = e^{−P_e}; f*(g(P_f)) = −1 − log(e^{−P_f}) = P_f − 1
    assert flat_loss(pe, pf, "reverse_kl").item() == pytest.approx(math.exp(-0.5) + 0.2 - 1)
    # JS: g(v) = log 2 − log(1 + e^{−v}); f*(g(v)) = −log(2 − 2σ(v))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert flat_loss(pe, pf, "js").item() == pytest.approx(-(math.log(2) - math.log(1 + math.exp(-0.5)))
                                                           - math.log(2 - 2 * sig(0.2)))
    # the batch mean of per-answer terms
    two = flat_loss(torch.tensor([0.5, 0.9]), torch.tensor([0.2, 0.1]), "tv").item()
    assert two == pytest.approx((flat_loss(pe, pf, "tv").item() + flat_loss(torch.tensor([0.9]), torch.tensor([0.1]), "tv").item()) / 2)


@pytest.mark.parametrize("divergence", sorted(DIVERGENCES))
def test_flat_loss_falls_with_the_template_and_rises_with_the_forget_probability(divergence):
    """All eight divergences push the right way (the public code's exp(+v) rows for reverse KL, squared
    Hellinger and Neyman push the wrong way)."""
    assert len(DIVERGENCES) == 8
    grid = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], dtype=torch.float64)
    pe, pf = torch.meshgrid(grid, grid, indexing="ij")
    pe, pf = pe.flatten().requires_grad_(True), pf.flatten().requires_grad_(True)
    grad_e, grad_f = torch.autograd.grad(flat_loss(pe, pf, divergence), (pe, pf))
    assert (grad_e < 0).all() and (grad_f > 0).all()
    with torch.no_grad():  # and in values, not only locally
        assert flat_loss(torch.tensor([0.6]), torch.tensor([0.3]), divergence) < flat_loss(torch.tensor([0.4]), torch.tensor([0.3]), divergence)
        assert flat_loss(torch.tensor([0.4]), torch.tensor([0.5]), divergence) > flat_loss(torch.tensor([0.4]), torch.tensor([0.3]), divergence)


def test_flat_loss_refuses_an_unknown_divergence():
    with pytest.raises(ConfigError, match="valid: kl"):
        flat_loss(torch.tensor([0.5]), torch.tensor([0.5]), "hellinger")


# ---- WAGLE ----------------------------------------------------------------------------------------
def test_wagle_scores_and_global_top_fraction():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    gf = {"a": torch.tensor([1.0, -1.0]), "b": torch.tensor([4.0])}
    gr = {"a": torch.tensor([0.0, 1e-6]), "b": torch.tensor([-1e-6])}
    scores = wagle_scores(params, gf, gr, mu=1e-6)
    # |(θ − G_r/μ)·G_f|: a0 = |1·1| = 1, a1 = |(2 − 1)·(−1)| = 1, b = |(0.5 + 1)·4| = 6
    assert torch.allclose(scores["a"], torch.tensor([1.0, 1.0])) and torch.allclose(scores["b"], torch.tensor([6.0]))
    mask = top_fraction_mask(scores, 1 / 3)
    assert mask["b"].tolist() == [True] and mask["a"].tolist() == [False, False]


# ---- metrics -------------------------------------------------------------------------------------
def test_exact_memorization_and_extraction_strength():
    correct = np.array([[True, True, True, False], [False, True, True, True], [True, True, False, True],
                        [True, True, False, False]])
    mask = np.array([[True, True, True, False], [True, True, True, True], [True, True, True, True],
                     [True, True, True, False]])
    # row 0: all 3 answer tokens right; row 1: 3 of 4, suffix from 1; row 2: 3 of 4, suffix from 3; row 3: last wrong
    assert exact_memorization(correct, mask).tolist() == pytest.approx([1.0, 0.75, 0.75, 2 / 3])
    assert extraction_strength(correct, mask).tolist() == pytest.approx([1.0, 0.75, 0.25, 0.0])
    with pytest.raises(ShapeError):
        exact_memorization(correct, mask[:, :2])


def test_min_k_and_min_k_plus_plus():
    logp = np.array([[-1.0, -5.0, -2.0, -0.1, 0.0], [-3.0, -3.0, 0.0, 0.0, 0.0]])
    mask = np.array([[True, True, True, True, False], [True, False, False, False, False]])
    # row 0: n = 4, ⌊0.4·4⌋ = 1 lowest: −5 -> 5 (⌈·⌉ would take −5, −2 -> 3.5); row 1: n = 1, at least one -> 3
    assert min_k_scores(logp, mask, 0.4).tolist() == pytest.approx([5.0, 3.0])
    assert min_k_scores(logp, mask, 0.5).tolist() == pytest.approx([3.5, 3.0])  # ⌊2⌋ = 2: −5, −2
    assert min_k_scores(logp, mask, 1.0).tolist() == pytest.approx([2.025, 3.0])
    z = min_k_plus_plus_tokens(np.array([[-1.0, -2.0]]), np.array([[-2.0, -2.0]]), np.array([[4.0, 0.0]]))
    assert z.tolist() == [[0.5, 0.0]]  # (−1 − (−2))/2; σ = 0 -> 0
    with pytest.raises(ValueError):
        min_k_scores(logp, mask, 0.0)


def test_zlib_divides_by_the_compressed_length():
    texts = ["Lima is where she was born.", "aaaa"]
    scores = zlib_scores(np.array([2.0, 3.0]), texts)
    assert scores.tolist() == pytest.approx([2.0 / len(zlib.compress(texts[0].encode())), 3.0 / len(zlib.compress(b"aaaa"))])


def test_mia_auc_orientation_and_privleak():
    # forget items all score lower (more member-like) than holdout: the attack separates them perfectly
    assert mia_auc(np.array([0.1, 0.2]), np.array([0.5, 0.6, 0.7])) == 1.0
    assert mia_auc(np.array([0.9, 1.0]), np.array([0.5, 0.6])) == 0.0
    assert mia_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert math.isnan(mia_auc(np.array([np.nan]), np.array([0.5])))
    # MUSE's sign: a model whose forget set is fully familiar (our AUC 1, MUSE's 0) reads −100 against a retrain
    # at 0.5; under-unlearned is negative, over-unlearned positive.
    assert privleak(1.0, 0.5) == pytest.approx(-100.0) and privleak(0.5, 0.5) == 0.0
    assert privleak(0.75, 0.5) == pytest.approx(-50.0) and privleak(0.25, 0.5) == pytest.approx(50.0)
    assert privleak(0.9, 0.6) == pytest.approx((0.1 - 0.4) / 0.4 * 100)
    assert math.isnan(privleak(float("nan"), 0.5)) and math.isnan(privleak(0.5, 1.0))


def test_privleak_equals_muses_formula_on_its_own_auc():
    """MUSE scores −MinK with the forget set labelled 0 (non-member) and holdout 1, then
    (AUC − AUC_retrain)/AUC_retrain × 100: computed here independently with scikit-learn."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    forget_m, holdout = rng.normal(1.0, 1.0, 40), rng.normal(2.0, 1.0, 50)  # the model finds forget familiar
    forget_r = rng.normal(1.9, 1.0, 40)                                     # the retrain hardly does
    labels = np.r_[np.zeros(40), np.ones(50)]
    muse = lambda f: roc_auc_score(labels, -np.r_[f, holdout])  # noqa: E731
    expected = (muse(forget_m) - muse(forget_r)) / muse(forget_r) * 100
    assert privleak(mia_auc(forget_m, holdout), mia_auc(forget_r, holdout)) == pytest.approx(expected)
    assert expected < -50  # under-unlearned reads negative, as MUSE's target models (about −100)


def test_truth_ratio_forget_normalised_probability_and_model_utility():
    assert truth_ratio_forget(np.array([0.5, 2.0, 1.0])) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    # P_c = 1/2, wrong = 1/4, 1/4 -> 0.5; P_c = 1, wrong 0 (NLL inf is not finite) -> NaN by contract
    nll = -np.log(np.array([0.5]))
    assert normalised_probability(nll, -np.log(np.array([[0.25, 0.25]]))) == pytest.approx(0.5)
    assert model_utility({"a": 0.5, "b": 1.0}) == pytest.approx(2 / (2 + 1))
    assert model_utility({"a": 0.0, "b": 1.0}) == 0.0
    assert math.isnan(model_utility({"a": float("nan"), "b": 1.0}))
