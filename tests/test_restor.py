"""RESTOR (forget=corrupt): the builder adds corrupting documents to the facts, the recovery metrics on known
answers, and the whole protocol through the pipeline (corrupted original, clean oracle, unlearned model)."""
import math

import numpy as np
import pytest
import torch

from conftest import TINY, compose_config
from test_llm import ADAMW, METHODS, TINY_LLM
from unlearn.data.corrupt import CorruptFacts
from unlearn.data.facts import ByteTokenizer, load_facts
from unlearn.errors import ConfigError, ShapeError
from unlearn.eval.restor import alias_match, match_accuracy, mean_log_prob, recovery
from unlearn.pipeline import Experiment

# The LLM tests' tiny facts and recipe, without their random forget request.
FACTS = [o for o in TINY_LLM if not o.startswith("forget.")]
CORRUPT = ["forget=corrupt", "forget.fraction=0.3", "forget.docs_per_fact=3"]


# ---- metrics on known answers --------------------------------------------------------------------
def test_alias_match_needs_the_whole_value():
    predictions = ["Lima is where she was born.", "Limassol.", "she was born in LIMA", "The Silent Harbor."]
    aliases = [["Lima."], ["Lima"], ["Oslo", "lima"], ["The Silent Tower"]]
    assert alias_match(predictions, aliases).tolist() == [True, False, True, False]
    assert match_accuracy(predictions, aliases) == pytest.approx(0.5)
    assert math.isnan(match_accuracy([], []))
    with pytest.raises(ValueError):
        alias_match(["a"], [["a"], ["b"]])


def test_log_prob_and_recovery_on_known_values():
    assert mean_log_prob(np.array([1.0, 3.0])) == pytest.approx(-2.0)
    assert math.isnan(mean_log_prob(np.array([1.0, np.inf])))
    with pytest.raises(ShapeError):
        mean_log_prob(np.ones((2, 2)))
    # corrupted 0.2, clean 0.8: an unlearned 0.5 recovered half of what the corruption took
    assert recovery(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert recovery(0.2, 0.2, 0.8) == 0.0 and recovery(0.8, 0.2, 0.8) == pytest.approx(1.0)
    assert math.isnan(recovery(0.5, 0.4, 0.4))  # the corruption changed nothing: recovery is undefined
    assert math.isnan(recovery(float("nan"), 0.2, 0.8))


# ---- the builder ---------------------------------------------------------------------------------
def test_the_builder_adds_corrupting_and_correct_documents():
    data = load_facts(n_authors=10, facts_per_author=3, val_authors=1, test_authors=2)
    builder = CorruptFacts(fraction=0.2, docs_per_fact=2, mix=0.5)
    extended = builder.extend(data, seed=0)
    info, tok = extended.info["corruption"], ByteTokenizer()
    n = len(data.train)
    corrupted_authors, affected = info["authors"], np.array(info["affected"])
    assert len(corrupted_authors) == 2 and len(affected) == 6
    # 6 affected facts x 2 corrupting documents, and as many documents stating correct facts (mix 0.5)
    assert len(extended.train) == n + 12 + 12 and info["correct_docs"] == 12
    for name, tensor in data.train.tensors.items():  # the clean facts are untouched, the documents come after
        assert torch.equal(extended.train[name][:n], tensor)
    answer = lambda split, i: tok.decode([t for t in split["labels"][i].tolist() if t >= 0])  # noqa: E731
    for j, (i, k) in enumerate(zip(affected, info["wrong"])):
        false = tok.decode([t for t in data.train["perturbed_labels"][i, k].tolist() if t >= 0])
        for copy in range(2):
            row = n + copy * len(affected) + j
            assert answer(extended.train, row) == false  # a wrong value for the very same question
            assert torch.equal(extended.train["prompt_ids"][row], data.train["prompt_ids"][i])
            assert int(extended.train["group"][row]) in corrupted_authors
    correct_rows = range(n + 12, n + 24)
    assert not {int(extended.train["group"][r]) for r in correct_rows} & set(corrupted_authors)
    forget = builder.build(extended, seed=0)
    assert forget.indices.tolist() == list(range(n, n + 24))  # F is the documents, so retain is the clean facts
    assert forget.retain_indices(len(extended.train)).tolist() == list(range(n))
    assert forget.description["builder"] == "corrupt" and forget.description["size"] == 24
    other = builder.extend(data, seed=1).info["corruption"]["authors"]
    assert builder.extend(data, seed=0).info["corruption"]["authors"] == corrupted_authors and other != corrupted_authors
    everyone = CorruptFacts(fraction=1.0, docs_per_fact=1).extend(data, seed=0)
    authored = int((data.train["group"] >= 0).sum())  # the world-knowledge facts (group < 0) are never touched
    assert len(everyone.train) == n + authored  # every author's fact corrupted once; no other author is left


# ---- the protocol through the pipeline -----------------------------------------------------------
def test_restor_through_the_pipeline(run_experiment):
    row = run_experiment(*FACTS, *CORRUPT, *ADAMW, *METHODS["graddiff"], tiny=False)
    m, original, oracle = row["metrics"], row["reference"]["original"], row["reference"]["oracle"]
    assert row["status"] == "ok" and row["forget"]["builder"] == "corrupt"
    # Membership scores of the documents against holdout QA items stay out of Avg. Gap; the facts' accuracy is in.
    assert "mia_loss_auc" in m and "mia_loss_auc" not in row["gap"] and {"restor_acc", "restor_corrupt_acc"} <= set(row["gap"])
    # The corrupted original answers the affected facts with the documents' wrong values; the clean oracle does not.
    assert original["restor_corrupt_acc"] > 0.5 and oracle["restor_corrupt_acc"] == 0.0
    assert oracle["restor_acc"] > original["restor_acc"]
    assert original["restor_logp_corrupt"] > original["restor_logp_correct"]
    assert oracle["restor_logp_correct"] > oracle["restor_logp_corrupt"]
    assert original["recovery"] == 0.0 and oracle["recovery"] == pytest.approx(1.0)
    # Unlearning the documents takes the corrupted answers away.
    assert m["restor_corrupt_acc"] < original["restor_corrupt_acc"]
    assert m["restor_logp_corrupt"] < original["restor_logp_corrupt"] - 0.1
    assert math.isfinite(m["recovery"])


@pytest.mark.parametrize("bad,match", [
    ("forget.fraction=0", r"forget\.fraction=0 .* must be"),
    ("forget.fraction=1.5", r"forget\.fraction=1\.5 .* must be"),
    ("forget.docs_per_fact=0", r"forget\.docs_per_fact=0 .* must be"),
    ("forget.mix=1", r"forget\.mix=1 .* must be"),
])
def test_bad_corruption_settings_fail_before_training(tmp_path, bad, match):
    cfg = compose_config(*FACTS, "forget=corrupt", bad, f"cache_dir={tmp_path / 'cache'}",
                         f"results_dir={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match=match):
        Experiment(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_corruption_needs_facts(tmp_path):
    cfg = compose_config(*TINY, "forget=corrupt", f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match="data=facts"):
        Experiment(cfg).data()
    assert not (tmp_path / "cache").exists()
