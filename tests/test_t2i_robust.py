"""Robust concept erasure (RECE, AdvUnlearn, CDC) and the adversarial-prompt attacks on the tiny text-to-image
world: each method raises UA above the original's (a no-op leaves it equal: same noise, same generations) and
moves only the parameters it should; the pure pieces are checked on hand-computed values; bad settings fail
before anything trains."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.errors import ConfigError, ShapeError
from unlearn.methods.cdc import project_conflicting
from unlearn.methods.rece import adversarial_embedding
from unlearn.models.prompt_embeddings import insert_slots
from unlearn.pipeline import Experiment

from conftest import compose_config
from test_t2i import TINY_T2I, unlearned_and_moved


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


def test_cdc_projection_is_the_true_projection():
    g_u, g_p = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # g_u·g_p = −1, ‖g_p‖² = 2: g_u − (−1/2)·g_p = (0.5, 0.5), orthogonal to g_p.
    projected = project_conflicting(g_u, g_p)
    assert torch.allclose(projected, torch.tensor([0.5, 0.5])) and float(projected @ g_p) == 0.0
    # The same with g_u scaled by 10: the projection scales with it (a unit-normalised term would not).
    assert torch.allclose(project_conflicting(10 * g_u, g_p), torch.tensor([5.0, 5.0]))
    assert torch.equal(project_conflicting(g_u, -g_p), g_u)            # no conflict: unchanged
    assert torch.equal(project_conflicting(g_u, torch.zeros(2)), g_u)
    with pytest.raises(ValueError):
        project_conflicting(g_u, torch.zeros(3))


def test_insert_slots_shifts_the_prompt_and_refuses_what_does_not_fit():
    pad = 9
    ids = torch.tensor([[7, 1, 2, pad, pad, pad]])       # BOS, two words, EOS (= pad), padding
    out, mask = insert_slots(ids, 2, pad)
    assert out.tolist() == [[7, pad, pad, 1, 2, pad]] and mask.tolist() == [[False, True, True, False, False, False]]
    with pytest.raises(ConfigError, match="do not fit"):
        insert_slots(ids, 3, pad)                          # the EOS would fall off
    with pytest.raises(ConfigError):
        insert_slots(ids, 0, pad)


# ---- the methods through the real pipeline ----------------------------------------------------------------------
METHODS = {
    "rece": ["method=rece"],
    "advunlearn": ["method=advunlearn", "method.sampling_steps=8", "method.epochs=30", "method.warmup=4",
                   "method.attack_steps=2"],
    "cdc": ["method=cdc", "method.sampling_steps=8", "method.epochs=30", "method.disc_warmup=4"],
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

    unlearned, moved = unlearned_and_moved(overrides, row, shared_cache)
    if method == "rece":
        assert set(moved) == kv_names(unlearned)
    else:  # AdvUnlearn trains attn2 on this world (conf/tuned/shapes_t2i/advunlearn.yaml), as CDC does
        assert moved and all(n.startswith("unet.") and ".attn2." in n for n in moved)


def test_advunlearn_trains_the_text_encoder_where_it_has_layers(run_experiment, shared_cache):
    overrides = [*TINY_T2I, *METHODS["advunlearn"], "method.epochs=4", "method.train=text_encoder", "model.text_layers=1"]
    row = run_experiment(*overrides, tiny=False)
    _, moved = unlearned_and_moved(overrides, row, shared_cache)  # the text encoder's layers and final norm only
    assert moved and all(n.startswith("text_encoder.") and "embeddings." not in n for n in moved)


def test_simplex_projection_on_hand_computed_values():
    from unlearn.attacks.prompt import project_simplex

    assert torch.allclose(project_simplex(torch.tensor([0.3, 0.7])), torch.tensor([0.3, 0.7]))  # already on it
    assert torch.allclose(project_simplex(torch.tensor([1.0, 1.0])), torch.tensor([0.5, 0.5]))
    assert torch.allclose(project_simplex(torch.tensor([2.0, 0.0])), torch.tensor([1.0, 0.0]))
    # sorted (0.6, 0.6, −0.2): two positive coordinates, θ = (1.2 − 1)/2 = 0.1.
    assert torch.allclose(project_simplex(torch.tensor([[0.6, -0.2, 0.6]])), torch.tensor([[0.5, 0.0, 0.5]]))


def test_attacked_prompts_replace_only_the_attacked_prompts():
    from unlearn.attacks.prompts import AttackedPrompts
    from unlearn.data.shapes_t2i import vocabulary
    from unlearn.models.t2i import TinyTextToImage

    torch.manual_seed(0)
    model = TinyTextToImage(vocabulary(), block_out_channels=(16, 32), text_width=32).eval()
    ids = model.tokenize(["a white circle on black", "a red circle on black", "a white ring on gray"])
    replaced = torch.randn(1, *model.encode_text(ids[:1]).shape[1:])
    attacked = AttackedPrompts(model, ids[:1], replaced)
    states, base = attacked.encode_text(ids), model.encode_text(ids)
    assert torch.allclose(states[0], replaced[0]) and torch.equal(states[1:], base[1:])
    assert not attacked.training and attacked.unet is model.unet


# ---- the attacks through the real pipeline ----------------------------------------------------------------------
ATTACKS = {
    "prompt": ["attack=prompt", "attack.steps=4", "attack.draws=2"],
    "ringabell": ["attack=ringabell"],
    "textual_inversion": ["attack=textual_inversion", "attack.steps=30"],
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attacks_report_success_rates_on_the_three_models(attack, run_experiment):
    row = run_experiment(*TINY_T2I, "method=uce", *ATTACKS[attack], tiny=False)
    assert row["status"] == "ok"
    m, original, oracle = row["metrics"], row["reference"]["original"], row["reference"]["oracle"]
    for metrics in (m, original, oracle):
        assert {f"{attack}.{k}" for k in ("UA", "IRA", "CRA", "pre_ASR", "ASR", "cost_s")} <= set(metrics)
        # pre-ASR counts the unattacked generations of the target prompts with the evaluation's own noise.
        assert metrics[f"{attack}.pre_ASR"] == pytest.approx(100 - metrics["UA"])
        assert metrics[f"{attack}.ASR"] >= metrics[f"{attack}.pre_ASR"] and metrics[f"{attack}.cost_s"] >= 0
    assert original[f"{attack}.pre_ASR"] >= 90  # the original draws the concept
    assert f"{attack}.ASR" not in row["gap"]
    if attack == "textual_inversion":  # a token learned on the original's images brings UCE's concept back
        assert m[f"{attack}.ASR"] >= m[f"{attack}.pre_ASR"] + 10, (m[f"{attack}.ASR"], m[f"{attack}.pre_ASR"])
    else:  # the attacked prompts change the target prompts' denoising (a no-op would not)
        assert m[f"{attack}.forget_mse"] != m["forget_mse"]


# ---- bad input: one ConfigError before anything trains, nothing written ---------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["method=uce", "attack=prompt", "attack.tokens=0"], "attack.tokens"),
    (["method=uce", "attack=prompt", "attack.steps=0"], "attack.steps"),
    (["method=uce", "attack=textual_inversion", "attack.steps=0"], "attack.steps"),
    (["method=advunlearn", "method.tokens=0"], "method.tokens"),
    (["method=advunlearn", "method.attack_steps=0"], "method.attack_steps"),
    (["method=advunlearn", "method.retain_prompts=[]"], "retain_prompts is empty"),
    (["method=advunlearn", "method.train=text_encoder"], "model.text_layers=0"),
    (["method=cdc", "forget.anchor=white"], "forget.anchor"),
])
def test_bad_robust_settings_fail_before_training(tmp_path, overrides, message):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=message):
        Experiment(compose_config(*TINY_T2I, *overrides, f"cache_dir={cache}")).run()
    assert not cache.exists() or not any(cache.iterdir())


def test_prompt_attacks_refuse_tasks_without_prompts(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="text-to-image"):
        Experiment(compose_config("data=digits", "method=ga", "attack=ringabell", f"cache_dir={cache}"))
    assert not cache.exists() or not any(cache.iterdir())


# ---- the saved tiny Stable Diffusion pipeline (model=sd_pretrained) ------------------------------------------
@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from test_t2i_sd import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.mark.parametrize("method, attack, kind", [
    (["method=rece"], ["attack=prompt", "attack.steps=2", "attack.draws=1"], "kv"),
    (["method=advunlearn", "method.train=text_encoder", "method.epochs=2", "method.warmup=1", "method.attack_steps=1",
      "method.sampling_steps=4"],
     ["attack=textual_inversion", "attack.steps=2"], "text_encoder"),
    (["method=cdc", "method.epochs=2", "method.disc_warmup=1", "method.sampling_steps=4"], ["attack=ringabell"], "attn2"),
])
def test_robust_methods_and_attacks_run_on_a_saved_pipeline(tiny_pipeline, run_experiment, method, attack, kind):
    from safetensors.torch import load_file

    from test_t2i_sd import SD
    from test_t2i import TINY_WORLD
    from unlearn.models.sd import CHANGED

    row = run_experiment(*TINY_WORLD, *SD, f"model.path={tiny_pipeline}", *method, *attack, tiny=False)
    assert row["status"] == "ok" and row["model"] == "StableDiffusion"
    prefix = attack[0].split("=")[1]
    assert {f"{prefix}.pre_ASR", f"{prefix}.ASR", f"{prefix}.UA"} <= set(row["metrics"])
    changed = load_file(str(Path(row["run_dir"]) / "model" / CHANGED))
    assert changed
    if kind == "kv":
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    elif kind == "text_encoder":
        assert all(n.startswith("text_encoder.") and "embeddings." not in n for n in changed)
    else:
        assert all(n.startswith("unet.") and ".attn2." in n for n in changed)
