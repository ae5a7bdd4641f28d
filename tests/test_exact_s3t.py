"""S3T: a deletion deactivates the invalidated LoRA groups; a shard serves its longest intact prefix and is
retrained only once it has none."""
from __future__ import annotations

import pytest
import torch

from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.methods.s3t import slice_orders
from unlearn.pipeline import Experiment

from conftest import TINY, apply_request

S3T = ["model=vit_tiny", "model.hidden_size=32", "model.mlp_size=64", "model.layers=2", "model.heads=2",
       "data.train.optimizer=adamw", "data.train.lr=3e-3", "data.train.epochs=5", "method=s3t", "method.shards=2",
       "method.slices=2", "method.budget=2", "method.epochs=2", "data.pretrain.n=20"]



def test_orders():
    assert slice_orders(3, 3, "cyclic", 0) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    matched = slice_orders(4, 4, "matching", 0)
    assert sorted(o[0] for o in matched) == [0, 1, 2, 3]  # every slice goes first in one order
    assert all(sorted(o) == [0, 1, 2, 3] for o in matched)
    # A deletion prior sends the likely-deleted slice last in every order; a uniform one changes nothing.
    likely = slice_orders(4, 3, "matching", 0, prior=[1, 1, 1, 20])
    assert all(o[-1] == 3 for o in likely) and len(set(likely)) == 3
    assert slice_orders(4, 4, "matching", 0, prior=[2, 2, 2, 2]) == matched


@pytest.mark.parametrize("prior", ["[1,1]", "[1,1,-1,1]", "[0,0,0,0]"])
def test_deletion_prior_refused_unless_one_weight_per_slice(prior, tmp_path):
    with pytest.raises(ConfigError, match="deletion_prior"):
        Experiment(compose_config(*TINY, *S3T, f"cache_dir={tmp_path}", "method.slices=4", "method.orders=matching",
                                  f"method.deletion_prior={prior}"))


@pytest.mark.parametrize("retrain", ["on_empty", "never"])
def test_deactivation_then_retrain_when_empty(retrain, shared_cache):
    exp = Experiment(compose_config(*TINY, *S3T, f"cache_dir={shared_cache}", f"method.retrain={retrain}"))
    original, *_ = exp.models.original_model(exp.seed)
    plan = exp.method._plan(exp.models.original_trainer(exp.seed))
    x = exp.data()[0].test["x"][:50]
    # Orders of 2 slices: (0, 1) and (1, 0). A deletion in shard 0's slice 0 leaves order (1, 0) a prefix of 1.
    first, figures = apply_request(exp, original, plan[0][0][:3])
    assert figures["stages_retrained"] == 0 and figures["live_shards"] == 2
    assert first.state["shards"][0]["prefix"] == [0, 1] and first.state["shards"][1]["prefix"] == [2, 2]
    # Shard 0 now serves order (1, 0) after its first stage: trained on slice 1 alone, later group deactivated.
    served = first.shards[0]
    stage = exp.method._stages[first.state["shards"][0]["keys"][1][0]]
    assert all(torch.equal(p.cpu(), stage[n]) for n, p in served.named_parameters() if n in stage)
    _, groups = exp.method._lora_model(exp.models.original_trainer(exp.seed))
    later = [p for p in exp.method._group_params(served, groups[1]) if p.dim() == 2 and p.shape[1] == exp.method.rank]
    assert later and not any(p.any() for p in later)  # the deactivated group's B matrices are zero
    assert not torch.allclose(first(x), original(x))
    # A deletion in slice 1 empties shard 0.
    second, figures = apply_request(exp, first, plan[0][1][:3])
    if retrain == "on_empty":
        assert figures["shards_retrained"] == 1 and figures["stages_retrained"] == 4
        assert second.state["shards"][0]["prefix"] == [2, 2] and figures["capacity"] == 1
    else:
        assert figures["live_shards"] == 1 and figures["stages_retrained"] == 0


def test_s3t_needs_enough_blocks(tmp_path):
    exp = Experiment(compose_config(*TINY, *S3T, f"cache_dir={tmp_path}", "method.slices=3"))
    with pytest.raises(ConfigError, match="at least 3 blocks"):
        exp.models.original_model(exp.seed)
