"""Exact unlearning: SISA retrains only what a request touched and lands where retraining would."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn.config import compose_config

from unlearn.errors import ConfigError
from unlearn.methods.sisa import stage_epochs
from unlearn.pipeline import Experiment

from conftest import TINY, apply_request

SISA = ["method=sisa", "method.shards=2", "method.slices=2", "method.epochs=40"]


def experiment(cache, *overrides) -> Experiment:
    return Experiment(compose_config(*TINY, f"cache_dir={cache}", *SISA, *overrides))



def forget_loss(exp: Experiment, model, forget: np.ndarray) -> float:
    data, _ = exp.data()
    with torch.no_grad():
        return float(exp.task.loss(model.eval(), data.train.subset(forget).tensors).mean())


def test_stage_epochs_every_stage_trains():
    assert stage_epochs(2, 4) == [1, 1, 1, 1]  # the reference's rounding gives [0, 1, 0, 1]
    assert stage_epochs(30, 2) == [20, 20] and stage_epochs(10, 4) == [4, 4, 4, 4]


def test_sisa_retrains_only_touched_shards_and_is_exact(shared_cache, tmp_path):
    exp = experiment(shared_cache)
    original, *_ = exp.models.original_model(exp.seed)
    plan = exp.method._plan(exp.models.original_trainer(exp.seed))
    forget = plan[1][1][:5]  # five points of shard 2's last slice
    unlearned, figures = apply_request(exp, original, forget)
    assert figures["shards_retrained"] == 1 and figures["stages_retrained"] == 1
    assert figures["speedup"] > 2
    for name, value in original.shards[0].state_dict().items():
        assert torch.equal(value, unlearned.shards[0].state_dict()[name])
    assert any(not torch.equal(v, unlearned.shards[1].state_dict()[k]) for k, v in original.shards[1].state_dict().items())
    # Exact: the same ensemble as training SISA from scratch on D \ F (a fresh cache trains every stage).
    scratch = experiment(tmp_path / "fresh")
    rebuilt, _ = scratch.method._build(scratch.models.original_trainer(scratch.seed), np.sort(forget), None)
    for mine, theirs in zip(unlearned.shards, rebuilt.shards):
        for name, value in mine.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[name])


def test_sisa_forget_loss_at_retrain_level(shared_cache):
    """A check with seeds of its own: the unlearned ensemble's loss on F sits within the spread of SISA
    retrained from scratch without F (three other model seeds); the original's (which trained on F) does not."""
    exp = experiment(shared_cache, "seed=3")
    original, *_ = exp.models.original_model(exp.seed)
    forget = np.random.default_rng(0).choice(len(exp.data()[0].train), 40, replace=False)
    unlearned, _ = apply_request(exp, original, forget)
    retrained = []
    for seed in (4, 5, 6):
        other = experiment(shared_cache, f"seed={seed}")
        model, _ = other.method._build(other.models.original_trainer(seed), np.sort(forget), None)
        retrained.append(forget_loss(other, model, forget))
    # On a log scale: a forget loss's seed-to-seed spread is multiplicative.
    low, high = np.log(min(retrained)), np.log(max(retrained))
    tolerance = (high - low) / 2
    assert low - tolerance <= np.log(forget_loss(exp, unlearned, forget)) <= high + tolerance
    assert np.log(forget_loss(exp, original, forget)) < low - tolerance  # a no-op would sit here

@pytest.mark.parametrize("overrides, message", [
    (["method.shards=200"], "at least 400 training examples"),
    (["method.slices=0"], "method.slices"),
])
def test_sisa_bad_input_refused_before_training(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        exp = experiment(tmp_path, *overrides)
        exp.models.original_model(exp.seed)
    assert not list(tmp_path.glob("sisa-stage-*"))
