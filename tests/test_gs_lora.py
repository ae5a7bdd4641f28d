"""GS-LoRA on a tiny ViT: the forget term is bounded, the group lasso leaves whole blocks untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.methods.base import UnlearnContext
from unlearn.pipeline import Experiment

from conftest import TINY

# A tiny ViT learns slowly: all 1258 training digits and 25 epochs give ~86% test accuracy in ~25 s.
VIT = ["model=vit_tiny", "model.hidden_size=32", "model.mlp_size=64", "model.layers=3", "model.heads=2",
       "data.source.limit=null", "data.train.optimizer=adamw", "data.train.lr=3e-3", "data.train.weight_decay=0.0",
       "data.train.epochs=25", "data.train.schedule=constant", "data.train.warmup_epochs=1"]


def unlearn_class(cache, *overrides, forget_class: int = 3):
    exp = Experiment(compose_config(*TINY, *VIT, f"cache_dir={cache}", "method=gs_lora", "method.epochs=30", *overrides))
    original, *_ = exp.models.original_model(exp.seed)
    data, _ = exp.data()
    labels = data.train["y"].cpu().numpy()
    forget = np.flatnonzero(labels == forget_class)
    ctx = UnlearnContext(task=exp.task, original=original, forget=data.train.subset(forget),
                         retain=data.train.subset(np.flatnonzero(labels != forget_class)), runtime=exp.runtime,
                         generator=torch.Generator().manual_seed(0), oracle=lambda: None, oracle_seconds=0.0,
                         forget_indices=forget)
    torch.manual_seed(0)
    return original, exp.method.unlearn(ctx), exp.method.run_metrics()


def test_forget_term_is_bounded(shared_cache):
    _, _, tight = unlearn_class(shared_cache, "method.bound=1.0", "method.group_lasso=0")
    _, _, loose = unlearn_class(shared_cache, "method.bound=30.0", "method.group_lasso=0")
    assert tight["forget_ce_after"] > tight["forget_ce_before"] + 0.5      # it does forget
    # but stops near the bound: its overshoot past it is a fraction of how far a 30× higher bound pushes (an absolute
    # margin moved with the CPU kind: 2.06 past the bound on an AMD EPYC, under 2 where it was written)
    overshoot = tight["forget_ce_after"] - tight["bnd"]
    assert overshoot < 0.5 * (loose["forget_ce_after"] - tight["forget_ce_after"]), (tight, loose)
    assert loose["forget_ce_after"] > tight["forget_ce_after"] + 2.0       # a higher bound pushes further


def test_group_lasso_leaves_blocks_untouched(shared_cache):
    _, _, dense = unlearn_class(shared_cache, "method.group_lasso=0")
    original, model, sparse = unlearn_class(shared_cache, "method.group_lasso=0.4")
    assert dense["blocks_untouched"] == 0 and sparse["blocks_untouched"] >= 1
    # An untouched block's merged weights are exactly the incoming model's.
    same = [all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in block.named_parameters(prefix=name))
            for name, block in original.blocks()]
    assert sum(same) == sparse["blocks_untouched"] < sparse["blocks"]


@pytest.mark.parametrize("method", ["gs_lora", "s3t"])
def test_lora_methods_refuse_models_without_transformer_blocks(method, tmp_path):
    exp = Experiment(compose_config(*TINY, f"cache_dir={tmp_path}", f"method={method}"))
    with pytest.raises(ConfigError, match="model=vit_tiny"):
        exp.models.original_model(exp.seed)
    assert not list(tmp_path.glob("original-*"))


def test_prototype_term_is_kl_from_the_prototype_to_the_model():
    """GS-LoRA++'s authors compute F.kl_div(log p_model, log p_proto, log_target=True): KL(prototype ‖ model),
    batch mean. Checked against the formula by hand, and against the reversed direction it must not be."""
    from unlearn.methods.gs_lora import prototype_kl

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    protos = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 2.0]])
    p = torch.softmax(logits, -1).numpy()
    q = torch.softmax(protos, -1).numpy()
    forward = float(np.mean(np.sum(q * (np.log(q) - np.log(p)), axis=1)))
    reverse = float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    assert float(prototype_kl(logits, protos)) == pytest.approx(forward, rel=1e-6)
    assert abs(forward - reverse) > 0.05
