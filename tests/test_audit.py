"""The privacy audit: RMIA (checked on a known answer and against the paper's formula written out here), TPR at
low FPR beside every membership AUC, and the fluency of an LM's answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TINY
from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.eval.fluency import nonword_rate, perplexity, repetition_rate, vocabulary
from unlearn.eval.mia import attack_roc
from unlearn.eval.rmia import fpr_name, low_fpr_figures, low_fpr_levels, rmia_scores
from unlearn.pipeline import Experiment


def paper_rmia(target_x, refs_x, target_z, refs_z, gamma, a):
    """RMIA's offline score from the paper's definitions, one target and one z at a time (probabilities)."""
    scores = []
    for i in range(len(target_x)):
        pr_x = 0.5 * ((1 + a) * np.mean(np.exp(refs_x[:, i])) + (1 - a))
        dominated = 0
        for j in range(len(target_z)):
            pr_z = 0.5 * ((1 + a) * np.mean(np.exp(refs_z[:, j])) + (1 - a))
            lr = (math.exp(target_x[i]) / pr_x) / (math.exp(target_z[j]) / pr_z)
            dominated += lr >= gamma
        scores.append(dominated / len(target_z))
    return np.array(scores)


def test_rmia_equals_the_papers_formula():
    rng = np.random.default_rng(0)
    refs_x, refs_z = np.log(rng.uniform(0.05, 0.9, (3, 20))), np.log(rng.uniform(0.05, 0.9, (3, 30)))
    target_x, target_z = np.log(rng.uniform(0.05, 0.99, 20)), np.log(rng.uniform(0.05, 0.9, 30))
    for gamma, a in ((2.0, 0.3), (1.0, 0.0), (1.5, 1.0)):
        assert rmia_scores(target_x, refs_x, target_z, refs_z, gamma, a) == pytest.approx(
            paper_rmia(target_x, refs_x, target_z, refs_z, gamma, a))


def test_rmia_finds_what_a_model_memorised_and_nothing_in_one_that_did_not():
    """Known answer: members get probability 0.95 from the model that trained on them, non-members and every
    reference model (which never saw them) about 0.5; a model that never saw the members scores them like the
    non-members."""
    rng = np.random.default_rng(1)
    noise = lambda *shape: rng.uniform(-0.05, 0.05, shape)  # noqa: E731
    refs = lambda n: np.log(0.5 + noise(2, n))  # noqa: E731
    members, nonmembers, z = 40, 40, 50
    refs_m, refs_n, refs_z = refs(members), refs(nonmembers), refs(z)
    memorised = {"m": np.log(0.95 + noise(members) / 10), "n": np.log(0.5 + noise(nonmembers)), "z": np.log(0.5 + noise(z))}
    fresh = {"m": np.log(0.5 + noise(members)), "n": np.log(0.5 + noise(nonmembers)), "z": np.log(0.5 + noise(z))}

    def auc(model):
        score = lambda key, r: rmia_scores(model[key], r, model["z"], refs_z, gamma=1.0)  # noqa: E731
        return attack_roc(score("m", refs_m), score("n", refs_n))["auc"]

    assert auc(memorised) == 1.0
    assert 0.3 < auc(fresh) < 0.7


def test_low_fpr_levels_follow_the_sample_and_refuse_what_it_cannot_resolve():
    assert low_fpr_levels(360) == (0.01,) and low_fpr_levels(1500) == (0.01, 0.001)
    assert low_fpr_levels(40) == (0.0,)  # too few for 1%: the TPR at FPR 0, named for what it is
    assert low_fpr_levels(500, [0.01]) == (0.01,) and low_fpr_levels(500, 0.01) == (0.01,)  # a list, or one number
    with pytest.raises(ConfigError, match=r"eval.low_fpr=0.001 needs at least 1000 held-out examples to resolve; the test split has 360"):
        low_fpr_levels(360, [0.01, 0.001])
    assert fpr_name(0.01) == "1pct" and fpr_name(0.001) == "0.1pct" and fpr_name(0.0) == "0pct"
    # an attack with AUC 0.5 can still identify a few examples perfectly: the low-FPR figure shows it
    positive = np.r_[np.full(5, 10.0), np.linspace(0, 1, 95)]
    negative = np.linspace(0, 1, 200)
    assert abs(attack_roc(positive, negative)["auc"] - 0.5) < 0.05
    assert low_fpr_figures(positive, negative, (0.01,), "mia_x") == {"mia_x_tpr_1pct": pytest.approx(0.05, abs=0.01)}


def test_fluency_of_a_fluent_answer_a_repeated_token_and_random_bytes():
    known = vocabulary(["She was born in Lima.", "He writes novels about the sea."])
    fluent, repeated = ["She was born in Lima."], ["Lima Lima Lima Lima Lima Lima"]
    noise = [bytes(np.random.default_rng(0).integers(33, 127, 40, dtype=np.uint8)).decode()]
    assert repetition_rate(fluent) == 0.0 and repetition_rate(repeated) == pytest.approx(5 / 6)
    assert nonword_rate(fluent, known) == 0.0 and nonword_rate(repeated, known) == 0.0
    assert nonword_rate(noise, known) > 0.9
    assert repetition_rate([""]) == 1.0 and nonword_rate([""], known) == 1.0
    assert perplexity(np.array([0.0, 0.0])) == 1.0 and perplexity(np.array([math.log(4.0)])) == pytest.approx(4.0)
    assert math.isnan(perplexity(np.array([np.inf])))


def test_a_population_reports_rmia_with_the_oracle_as_its_floor(run_experiment):
    row = run_experiment("eval.oracles=3", "method=ft", "method.epochs=2")
    metrics = row["metrics"]
    for prefix in ("rmia", "rmia_original", "rmia_oracle"):
        assert 0 <= metrics[f"{prefix}_auc"] <= 1 and 0 <= metrics[f"{prefix}_tpr_1pct"] <= 1
    assert metrics["rmia_original_auc"] > metrics["rmia_oracle_auc"]  # the original still holds its forget set
    assert "mia_loss_tpr_1pct" in metrics and "mia_loss_tpr_0.1pct" not in metrics  # 360 test digits: 1% only


@pytest.mark.parametrize("overrides, message", [
    (["eval.rmia=true"], r"eval.rmia=true needs reference models: .* eval.oracles >= 2 \(got 1\)"),
    (["eval.oracles=3", "eval.rmia_offline_a=2"], r"eval.rmia_offline_a in \[0, 1\]"),
])
def test_rmia_settings_are_refused_before_training(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        Experiment(compose_config(*TINY, f"cache_dir={tmp_path}", *overrides))


def test_reference_metrics_follow_the_requested_fpr_levels(run_experiment):
    """The cached reference metrics are keyed by the FPR levels: a run asking for 5% gets them for every model."""
    run_experiment("method=ga", "method.epochs=1")
    row = run_experiment("method=ga", "method.epochs=1", "eval.low_fpr=[0.05]")
    for values in (row["metrics"], row["reference"]["original"], row["reference"]["oracle"]):
        assert "mia_loss_tpr_5pct" in values and "mia_loss_tpr_1pct" not in values


def test_an_fpr_the_test_split_cannot_resolve_is_refused_before_training(tmp_path):
    exp = Experiment(compose_config(*TINY, f"cache_dir={tmp_path}", "eval.low_fpr=[0.0001]"))
    with pytest.raises(ConfigError, match=r"eval.low_fpr=0.0001 needs at least 10000 held-out examples"):
        exp.data()
    assert not any(tmp_path.rglob("original-*"))


def test_an_lm_row_reports_answer_fluency(run_experiment):
    from test_llm import ADAMW, TINY_LLM

    row = run_experiment(*TINY_LLM, "method=ga", *ADAMW, "method.lr=2e-3", "method.epochs=3", tiny=False)
    original, unlearned = row["reference"]["original"], row["metrics"]
    for values in (original, unlearned):
        assert {"forget_fluency_ppl", "forget_repetition", "forget_nonword", "retain_fluency_ppl"} <= set(values)
        assert "mia_loss_tpr_0pct" in values and "mia_loss_tpr_1pct" not in values  # 9 holdout answers: FPR 0 only
        assert values["forget_fluency_ppl"] >= 1.0
    assert original["forget_nonword"] < 0.2  # the original answers in the world's words
