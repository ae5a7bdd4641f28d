"""Known answers for the distribution-level metrics: KL-to-retrain, KLoM, MIA features/attacks/LiRA, Kaggle ε score."""
import math

import numpy as np
import pytest
from scipy.special import softmax

from unlearn.errors import ShapeError
from unlearn.eval.epsilon import (
    default_max_epsilon,
    epsilon_from_rates,
    example_epsilon,
    example_score,
    forgetting_quality,
    per_example_epsilon,
    unlearning_score,
)
from unlearn.eval.kl import kl_to_reference, summarize
from unlearn.eval.klom import klom, margins
from unlearn.eval.mia import (
    attack_roc,
    entropy,
    lira_scores,
    logit_scaled_confidence,
    loss_attack_auc,
    modified_entropy,
    tpr_at_fpr,
    unlearning_lira,
)

# ------------------------------------------------------------------------------------------------ KL


def test_kl_identical_distributions_is_zero_even_with_zeros():
    p = np.array([[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]])
    assert kl_to_reference(p, p).tolist() == [0.0, 0.0]


def test_kl_is_asymmetric_with_known_values():
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    assert kl_to_reference(p, q)[0] == pytest.approx(math.log(5 / 3), rel=1e-9)
    assert kl_to_reference(q, p)[0] == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-9)


def test_kl_oracle_zero_is_large_but_finite():
    value = kl_to_reference(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), eps=1e-12)[0]
    assert math.isfinite(value) and value == pytest.approx(math.log(1e12), rel=1e-6)


def test_kl_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match=r"oracle_probs must have shape \(n, C\) with n=2 .*got \(3, 3\)"):
        kl_to_reference(np.full((2, 3), 1 / 3), np.full((3, 3), 1 / 3))


def test_summarize_mean_and_percentile():
    assert summarize(np.arange(101.0)) == {"mean": 50.0, "p95": 95.0}
    assert summarize(np.arange(101.0), percentile=99) == {"mean": 50.0, "p99": 99.0}
    assert all(math.isnan(v) for v in summarize(np.array([])).values())


# ------------------------------------------------------------------------------------------------ KLoM


def test_margins_known_values_and_batching():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    labels = np.array([0, 2])
    expected = [2.0 - math.log(math.e + 1.0), -math.log(2.0)]
    assert margins(logits, labels) == pytest.approx(expected, rel=1e-12)
    # (N_models, n, C) with (n,) labels; and it is log p_y − log(1 − p_y).
    stacked = np.stack([logits, logits + 5.0])
    assert margins(stacked, labels) == pytest.approx(np.array([expected, expected]), rel=1e-12)
    p = softmax(logits, axis=1)[[0, 1], labels]
    assert margins(logits, labels) == pytest.approx(np.log(p / (1 - p)), rel=1e-12)


def test_margins_rejects_bad_labels():
    with pytest.raises(ShapeError, match="labels must lie"):
        margins(np.zeros((2, 3)), np.array([0, 3]))


def test_klom_hand_computed_histograms_and_order():
    # 2 bins over [0, 1]: unlearned [0,0,1,1] -> (1/2, 1/2); oracle [0,1,1,1] -> (1/4, 3/4).
    unlearned = np.array([[0.0], [0.0], [1.0], [1.0]])
    oracle = np.array([[0.0], [1.0], [1.0], [1.0]])
    assert klom(unlearned, oracle, bins=2)[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    swapped = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert klom(oracle, unlearned, bins=2)[0] == pytest.approx(swapped, rel=1e-12)


def test_klom_identical_samples_zero_and_disjoint_hits_the_floor():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(30, 5))
    assert klom(samples, samples).tolist() == [0.0] * 5
    assert klom(np.ones((4, 2)), np.ones((6, 2))).tolist() == [0.0, 0.0]  # zero-width range
    far = klom(samples, samples + 100.0, floor=1e-5)
    assert far == pytest.approx(np.full(5, math.log(1e5)), rel=1e-12)


def test_klom_models_counts_may_differ_but_examples_must_match():
    assert klom(np.zeros((3, 4)), np.zeros((5, 4))).shape == (4,)
    with pytest.raises(ShapeError, match=r"oracle_margins must have shape \(\*, n\) with n=4"):
        klom(np.zeros((3, 4)), np.zeros((3, 5)))


# ------------------------------------------------------------------------------------------------ MIA features


def test_entropy_known_values():
    probs = np.array([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]])
    assert entropy(probs) == pytest.approx([math.log(4), 0.0], abs=1e-12)


def test_modified_entropy_matches_hand_computation():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    hand_label0 = -0.3 * math.log(0.7) - 0.2 * math.log(0.8) - 0.1 * math.log(0.9)
    hand_label1 = -0.8 * math.log(0.2) - 0.7 * math.log(0.3) - 0.1 * math.log(0.9)
    assert modified_entropy(probs, np.array([0, 1])) == pytest.approx([hand_label0, hand_label1], rel=1e-12)
    # Confident and right -> 0; confident and wrong -> large but finite.
    right, wrong = modified_entropy(np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([0, 1]))
    assert right == 0.0 and math.isfinite(wrong) and wrong > 100


def test_logit_scaled_confidence_agrees_with_margins():
    logits = np.array([[3.0, -1.0, 0.5], [0.0, 2.0, 2.0]])
    labels = np.array([0, 1])
    assert logit_scaled_confidence(softmax(logits, axis=1), labels) == pytest.approx(margins(logits, labels), rel=1e-9)


# ------------------------------------------------------------------------------------------------ attacks


def test_loss_attack_auc_known_values():
    assert loss_attack_auc(np.array([0.1, 0.2]), np.array([1.0, 2.0])) == 1.0
    assert loss_attack_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert loss_attack_auc(np.array([1.0, 2.0]), np.array([0.1, 0.2])) == 0.0
    # Pairs (member, non-member): (1,2) (1,4) (3,4) ranked right, (3,2) wrong.
    assert loss_attack_auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.75
    assert math.isnan(loss_attack_auc(np.array([]), np.array([1.0])))


def test_tpr_at_fpr_known_value():
    negatives = np.arange(100.0)
    positives = np.array([50.5, 98.5, 99.5, 200.0])
    # FPR <= 1% allows one negative (99) above the threshold 98.5, which three positives clear.
    assert tpr_at_fpr(positives, negatives, 0.01) == 0.75
    assert tpr_at_fpr(positives, negatives, 0.0) == 0.5
    assert attack_roc(positives, negatives)["auc"] == pytest.approx((51 + 99 + 100 + 100) / 400)


def test_lira_scores_hand_computed():
    in_stats, out_stats = np.array([[0.0], [2.0]]), np.array([[-1.0], [-3.0]])
    # Both Gaussians have σ² = 2 (ddof=1); at φ = 1 (μ_in) the ratio is (1 − (−2))² / (2·2).
    assert lira_scores(np.array([1.0]), in_stats, out_stats)[0] == pytest.approx(9 / 4, rel=1e-12)
    assert lira_scores(np.array([-2.0]), in_stats, out_stats)[0] == pytest.approx(-9 / 4, rel=1e-12)


def test_lira_global_variance_pools_over_examples():
    in_stats = np.array([[0.0, 0.0], [2.0, 4.0]])  # per-example σ² = 2 and 8, pooled 5
    out_stats = in_stats - 10.0
    query = np.array([1.0, 2.0])
    pooled = lira_scores(query, in_stats, out_stats, global_variance=True)
    expected = [((1 + 9) ** 2 - 0) / (2 * 5), ((2 + 8) ** 2 - 0) / (2 * 5)]
    assert pooled == pytest.approx(expected, rel=1e-12)
    assert not np.allclose(lira_scores(query, in_stats, out_stats), pooled)


def test_unlearning_lira_separates_noop_from_oracle_like_models():
    rng = np.random.default_rng(0)
    originals = rng.normal(3.0, 1.0, size=(6, 200))
    oracles = rng.normal(0.0, 1.0, size=(6, 200))
    # Unlearned models identical to the oracles are scored exactly like them (leave-one-out on both sides).
    assert unlearning_lira(originals, oracles, oracles.copy())["auc"] == pytest.approx(0.5, abs=1e-12)
    # A method that changes nothing: each unlearned model is its original (scored without that original).
    noop = unlearning_lira(originals, oracles, originals.copy())
    assert noop["auc"] > 0.9 and noop["tpr_at_fpr"] > 0.3
    good = unlearning_lira(originals, oracles, rng.normal(0.0, 1.0, size=(6, 200)))
    assert abs(good["auc"] - 0.5) < 0.05 and good["tpr_at_fpr"] < 0.05


def test_unlearning_lira_needs_three_models_per_reference_group():
    with pytest.raises(ShapeError, match="oracle_stats must be .* N_models >= 3"):
        unlearning_lira(np.zeros((3, 4)), np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="original_stats must be .* N_models >= 3"):
        unlearning_lira(np.zeros((2, 4)), np.zeros((3, 4)), np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------------ ε score


def test_epsilon_from_rates_known_values_and_special_cases():
    eps = epsilon_from_rates(np.array([0.1, 0.2, 0.0, 0.0, 0.3, 0.5, 1.0]),
                             np.array([0.1, 0.5, 0.0, 0.3, 0.0, 0.5, 1.0]), delta=0.0)
    assert eps[0] == pytest.approx(math.log(9), rel=1e-12)
    assert eps[1] == pytest.approx(math.log(0.5 / 0.2), rel=1e-12)  # the larger of the two bounds
    assert eps[2] == math.inf  # perfect separation
    assert math.isnan(eps[3]) and math.isnan(eps[4])  # one zero rate: discarded
    assert eps[5] == 0.0 and eps[6] == 0.0  # a coin flip, and an attack that is always wrong


def test_example_epsilon_hand_computed():
    # Retrain has the larger median; the threshold at 1 misses one retrain and one unlearned value.
    assert example_epsilon([0, 0, 0, 1], [0, 1, 1, 1]) == pytest.approx(math.log((0.75 - 1e-5) / 0.25), rel=1e-12)
    assert example_epsilon([1, 1, 1], [1, 1, 1, 1]) == 0.0  # nothing to tell apart
    assert example_epsilon([1, 1], [2, 2]) == math.inf  # perfectly separated
    assert example_epsilon([1, 1, 1, 1], [0, 1, 2, 3]) == math.inf  # point mass vs spread (scorer's rule)


def test_interval_attack_finds_what_thresholds_miss():
    unlearned = [-0.2, -0.1, 0.0, 0.1, 0.2, 0.05, -0.05, 2.5]
    retrain = [-3.0, -2.0, -1.0, -0.5, 0.0, 1.0, 2.0, 3.0]
    # [-0.2, 0.2] holds 7/8 unlearned and 1/8 retrain values: the largest finite ε that 8 samples allow.
    best = math.log((1 - 1e-5 - 1 / 8) * 8)
    assert example_epsilon(unlearned, retrain) == pytest.approx(best, rel=1e-12)
    # That interval is far narrower than the unlearned spread (2.7): with no slack it is not tried.
    assert example_epsilon(unlearned, retrain, interval_slack=0.0) < best - 0.1


def test_default_bins_and_points():
    assert default_max_epsilon(512) == 7.0 and default_max_epsilon(10) == 3.0
    with pytest.raises(ValueError, match="at least 3 models"):
        default_max_epsilon(2)
    points = example_score(np.array([0.0, 0.49, 0.5, 1.2, 2.9, 3.0, math.inf]), max_epsilon=3.0)
    assert points.tolist() == [1.0, 1.0, 0.5, 0.25, 2 / 2**6, 0.0, 0.0]


def test_forgetting_quality_best_worst_and_in_between():
    rng = np.random.default_rng(0)
    retrain = rng.normal(size=(10, 40))
    assert forgetting_quality(retrain.copy(), retrain) == 1.0
    assert forgetting_quality(retrain + 100.0, retrain) == 0.0
    # A single example with ε = log 3 (bin 3 of 4 for N = 4 -> 2/2^3).
    assert forgetting_quality(np.array([[0.0, 0, 0, 1]]).T, np.array([[0.0, 1, 1, 1]]).T) == 0.25
    near = forgetting_quality(retrain + 0.3, retrain)
    far = forgetting_quality(retrain + 2.0, retrain)
    assert 1.0 > near > far > 0.0
    assert per_example_epsilon(retrain + 100.0, retrain).tolist() == [math.inf] * 40


def test_unlearning_score_known_value_and_bad_reference():
    assert unlearning_score(0.5, ra_u=90.0, ra_r=100.0, ta_u=80.0, ta_r=90.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="must be > 0"):
        unlearning_score(0.5, 90.0, 0.0, 80.0, 90.0)


def test_attack_roc_accepts_infinite_scores():
    assert loss_attack_auc(np.array([0.1, 0.2]), np.array([1.0, math.inf])) == 1.0
