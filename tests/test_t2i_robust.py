"""Robust concept erasure (RECE, AdvUnlearn, CDC) and the adversarial-prompt attacks on the tiny text-to-image
world: each method raises UA above the original's (a no-op leaves it equal: same noise, same generations) and
moves only the parameters it should; the pure pieces are checked on hand-computed values; bad settings fail
before anything trains."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.errors import ShapeError
from unlearn.methods.rece import adversarial_embedding
from unlearn.pipeline import Experiment

from conftest import compose_config
from test_t2i import TINY_T2I, changed_parameters


# ---- pure pieces, on hand-built values ------------------------------------------------------------------------
def test_rece_adversarial_embedding_on_hand_built_matrices():
    eye = torch.eye(2)
    c = torch.tensor([[1.0, 1.0]])
    # Unedited projections: c′ = (WᵀW + λI)⁻¹ WᵀW c = c / (1 + λ).
    assert torch.allclose(adversarial_embedding([eye], [eye], c, 0.5), c / 1.5)
    # W′ = diag(2, 1), W = I, λ = 1: (diag(4, 1) + I)⁻¹ diag(2, 1) c = (2/5, 1/2).
    edited, original = [torch.diag(torch.tensor([2.0, 1.0]))], [eye]
    assert torch.allclose(adversarial_embedding(edited, original, c, 1.0), torch.tensor([[0.4, 0.5]]))
    # A second, 1 x 2 projection left unedited adds [[0, 0], [0, 1]] to both sums: (2/5, 2/3).
    row = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(adversarial_embedding([*edited, row], [*original, row], c, 1.0),
                          torch.tensor([[0.4, 2.0 / 3.0]]))
    with pytest.raises(ShapeError):
        adversarial_embedding([eye], [torch.eye(3)], c, 1.0)
    with pytest.raises(ValueError):
        adversarial_embedding([eye], [eye], c, 0.0)


# ---- the methods through the real pipeline ----------------------------------------------------------------------
METHODS = {
    "rece": ["method=rece"],
}


def kv_names(model) -> set[str]:
    return {f"unet.{n}.weight" for n in model.cross_attention_projections()}


@pytest.mark.parametrize("method", list(METHODS))
def test_robust_methods_erase_the_concept(method, run_experiment, shared_cache):
    overrides = [*TINY_T2I, *METHODS[method]]
    row = run_experiment(*overrides, tiny=False)
    assert row["status"] == "ok" and row["task"] == "t2i"
    metrics, original = row["metrics"], row["reference"]["original"]
    assert metrics["UA"] >= original["UA"] + 10, (metrics["UA"], original["UA"])

    experiment = Experiment(compose_config(*overrides, f"cache_dir={shared_cache}"))
    base = experiment.prepare().original
    unlearned = experiment.model_from_state(torch.load(Path(row["run_dir"]) / "model.pt"))
    moved = changed_parameters(unlearned, base)
    if method == "rece":
        assert set(moved) == kv_names(unlearned)
