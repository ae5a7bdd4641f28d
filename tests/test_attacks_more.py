"""Quantization, pruning and probing attacks (issue 29): known answers of their arithmetic, each attack through
the real pipeline on tiny settings, and bad settings refused before anything trains."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY
from test_llm import ADAMW, METHODS, TINY_LLM
from unlearn.attacks.ablate import ablation_hook
from unlearn.attacks.base import weight_matrices
from unlearn.attacks.prune import magnitude_masks
from unlearn.attacks.quantize import quantize_weight
from unlearn.config import compose_config
from unlearn.errors import ConfigError
from unlearn.eval.probes import answer_scores, difference_of_means, project_out
from unlearn.pipeline import Experiment

GA_LLM = [*TINY_LLM, *ADAMW, *METHODS["ga"]]


# ---- quantization -----------------------------------------------------------------------------------
def test_symmetric_4bit_of_a_known_row():
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0]])  # s = 0.7 / 7 = 0.1: levels 7, −3.5 → −4 (half to even), 1, 0
    values, step, level = quantize_weight(w, 4, None, "symmetric")
    assert torch.allclose(values, torch.tensor([[0.7, -0.4, 0.1, 0.0]]))
    assert torch.allclose(step, torch.full_like(w, 0.1)) and level.tolist() == [[7, -4, 1, 0]]


def test_asymmetric_4bit_of_a_known_row_keeps_its_range():
    w = torch.tensor([[0.0, 1.5, 0.5, 0.2]])  # s = 1.5 / 15 = 0.1, zero point 0
    values, _, _ = quantize_weight(w, 4, None, "asymmetric")
    assert torch.allclose(values, torch.tensor([[0.0, 1.5, 0.5, 0.2]]), atol=1e-6)
    shifted, _, _ = quantize_weight(w + 3.0, 4, None, "asymmetric")  # a range away from 0 keeps its 16 levels
    assert (shifted - (w + 3.0)).abs().max() <= 0.05 + 1e-6


def test_groups_have_their_own_scales():
    w = torch.tensor([[1.0, 0.5, 0.01, 0.004]])
    whole, _, _ = quantize_weight(w, 4, None, "symmetric")
    grouped, step, _ = quantize_weight(w, 4, 2, "symmetric")
    assert whole[0, 3] == 0 and grouped[0, 3] != 0  # the small group keeps its small values
    assert torch.allclose(step[0], torch.tensor([1 / 7, 1 / 7, 0.01 / 7, 0.01 / 7]))


def test_8bit_symmetric_error_is_at_most_half_a_step():
    w = torch.randn(16, 200, generator=torch.Generator().manual_seed(0))
    values, step, _ = quantize_weight(w, 8, 64, "symmetric")  # 200 = 3 groups of 64 and a padded one
    assert ((values - w).abs() <= step / 2 + 1e-7).all()
    assert ((values - w).abs() <= w.abs().max() / 127 / 2 + 1e-7).all()


def test_gguf_formats_of_a_known_block():
    w = torch.zeros(1, 32)
    w[0, :4] = torch.tensor([-1.6, 0.8, 0.5, -0.3])
    q8, _, _ = quantize_weight(w, 8, None, "q8_0")  # d = 1.6 / 127
    assert torch.allclose(q8, w, atol=1.6 / 127 / 2 + 1e-4)
    q40, _, level = quantize_weight(w, 4, None, "q4_0")  # d = −1.6 / −8 = 0.2: x̂ = (trunc(x/d + 8.5) − 8)·d
    assert torch.allclose(q40[0, :4], torch.tensor([-1.6, 0.8, 0.6, -0.2]), atol=1e-3)
    q41, _, _ = quantize_weight(w, 4, None, "q4_1")  # min −1.6, d = 2.4 / 15 = 0.16
    assert math.isclose(float(q41[0, 0]), -1.6, abs_tol=1e-3) and math.isclose(float(q41[0, 1]), 0.8, abs_tol=1e-3)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0", "q4_1"])
def test_gguf_formats_are_bit_exact_to_the_gguf_package(scheme):
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    qtype = getattr(gguf.GGMLQuantizationType, scheme.upper())
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    w[0, :32] = 0.0  # an all-zero block (scale 0)
    expected = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
    mine, _, _ = quantize_weight(w, 4 if scheme != "q8_0" else 8, None, scheme)
    np.testing.assert_array_equal(mine.numpy(), expected)


def test_weight_matrices_skip_the_lm_head_embeddings_and_norms():
    from unlearn.models.llm import tiny_llama

    model = tiny_llama(259, 16, 2, 2, 32)
    names = [name for name, _ in weight_matrices(model)]
    assert len(names) == 2 * 7 and all("proj" in n for n in names)  # q, k, v, o, gate, up, down per layer


# ---- pruning ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_zeroes_exactly_the_smallest_fraction(scope):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(10, 7, generator=g), torch.randn(13, generator=g) * 5]
    masks = magnitude_masks(weights, 0.3, scope)
    if scope == "global":
        flat = torch.cat([w.abs().flatten() for w in weights])
        kept = torch.cat([m.flatten() for m in masks])
        assert int((~kept).sum()) == int(0.3 * flat.numel())
        assert flat[~kept].max() <= flat[kept].min()
    else:
        for w, m in zip(weights, masks):
            assert int((~m).sum()) == int(0.3 * w.numel()) and w.abs()[~m].max() <= w.abs()[m].min()


def test_pruning_ties_are_broken_to_the_exact_count():
    masks = magnitude_masks([torch.ones(10)], 0.35, "global")
    assert int((~masks[0]).sum()) == 3


# ---- probes -----------------------------------------------------------------------------------------
def test_answer_scores_average_per_answer():
    logp = torch.log(torch.tensor([0.5, 0.5, 1.0]))
    prob, acc = answer_scores(logp, torch.tensor([True, False, True]), torch.tensor([0, 0, 1]))
    assert math.isclose(prob, (0.5 + 1.0) / 2) and math.isclose(acc, (0.5 + 1.0) / 2)


def test_projection_removes_the_direction():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 8, generator=g) + 2.0, torch.randn(40, 8, generator=g)
    r = difference_of_means(a, b)
    assert math.isclose(float(r.norm()), 1.0, rel_tol=1e-6)
    h = torch.randn(3, 5, 8, generator=g)
    assert (project_out(h, r) @ r).abs().max() < 1e-5
    assert torch.allclose(project_out(project_out(h, r), r), project_out(h, r), atol=1e-6)  # idempotent


def test_ablation_hook_removes_the_direction_from_a_decoder_layer():
    from unlearn.models.llm import tiny_llama

    torch.manual_seed(0)
    model = tiny_llama(259, 16, 2, 2, 32).eval()
    r = difference_of_means(torch.randn(5, 16), torch.randn(5, 16))
    seen = []
    model.model.layers[0].register_forward_hook(ablation_hook(r))
    model.model.layers[1].register_forward_pre_hook(lambda _m, args, kwargs: seen.append(
        args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
    model(input_ids=torch.randint(0, 256, (2, 6)))
    assert (seen[0] @ r).abs().max() < 1e-5


# ---- through the pipeline ---------------------------------------------------------------------------
def _attacked(row, prefix):
    """The attacked metrics of the unlearned model and of the original and the oracle."""
    return [{k.split(".", 1)[1]: v for k, v in m.items() if k.startswith(prefix + ".")}
            for m in (row["metrics"], row["reference"]["original"], row["reference"]["oracle"])]


def test_quantize_and_prune_a_classifier(run_experiment):
    row = run_experiment("method=ga", "attack=quantize", "attack.bits=8", "attack.group_size=32")
    mine, original, oracle = _attacked(row, "quantize")
    for attacked, plain in zip((mine, original, oracle), (row["metrics"], row["reference"]["original"],
                                                          row["reference"]["oracle"])):
        assert abs(attacked["RA"] - plain["RA"]) < 2.0 and attacked["cost_s"] < 5  # 8 bits hardly change it
    assert math.isnan(original["rounded_back"]) and 0 <= mine["rounded_back"] <= 1 and 0 <= oracle["below_half_step"] <= 1
    pruned, *_ = _attacked(run_experiment("method=ga", "attack=prune", "attack.rate=0.5", "attack.scope=layer"), "prune")
    assert abs(pruned["sparsity"] - 0.5) < 0.01 and {"UA", "RA", "TA"} <= set(pruned)


def test_lm_probes_through_the_pipeline(run_experiment):
    lens = run_experiment(*GA_LLM, "attack=logit_lens", tiny=False)
    for role, metrics in zip(("unlearned", "original", "oracle"), _attacked(lens, "logit_lens")):
        plain = lens["metrics"] if role == "unlearned" else lens["reference"][role]
        # the lens at the last layer is the model's own read-out
        assert math.isclose(metrics["last_prob"], plain["forget_prob"], rel_tol=1e-4), role
        assert math.isclose(metrics["last_acc"], plain["exact_memorization"], rel_tol=1e-4), role
        assert metrics["prob"] >= metrics["last_prob"] and metrics["layer"] in (1.0, 2.0)
        assert "forget_rouge" not in metrics  # a probe reports figures only
    probe = _attacked(run_experiment(*GA_LLM, "attack=probe", tiny=False), "probe")
    assert all(0 <= m["acc"] <= 1 and m["fit_acc"] > 0.5 for m in probe)
    assert probe[1]["acc"] > probe[2]["acc"]  # the original's states hold the forget answers, the oracle's less so
    few = _attacked(run_experiment(*GA_LLM, "attack=fewshot", "attack.k=2", tiny=False), "fewshot")
    assert all(0 < m["forget_prob"] < 1 and 0 <= m["forget_acc"] <= 1 for m in few)


@pytest.mark.parametrize("attack", [["attack=ablate", "attack.layer=2"], ["attack=quantize", "attack.bits=4",
                                                                          "attack.scheme=q4_0"]])
def test_lm_weight_attacks_rescore_the_model(run_experiment, attack):
    row = run_experiment(*GA_LLM, *attack, tiny=False)
    prefix = attack[0].split("=")[1]
    mine, original, oracle = _attacked(row, prefix)
    for m in (mine, original, oracle):
        assert {"forget_prob", "retain_prob", "model_utility", "cost_s"} <= set(m) and 0 < m["forget_prob"] < 1
    assert original["forget_prob"] > oracle["forget_prob"]


def test_prune_a_diffusion_model(run_experiment):
    from test_diffusion import ADAM, TINY_DIFFUSION

    row = run_experiment(*TINY_DIFFUSION, "method=ga", *ADAM, "attack=prune", "attack.rate=0.2", tiny=False)
    mine, original, oracle = _attacked(row, "prune")
    assert all({"UA", "forget_mse", "sparsity"} <= set(m) and abs(m["sparsity"] - 0.2) < 0.01 for m in (mine, original, oracle))


# ---- bad input: one ConfigError line before anything trains ------------------------------------------
@pytest.mark.parametrize("overrides,match", [
    (["attack=quantize", "attack.bits=3"], r"attack\.bits=3"),
    (["attack=quantize", "attack.scheme=q4_0", "attack.bits=8"], r"4-bit format"),
    (["attack=quantize", "attack.group_size=0"], r"attack\.group_size=0"),
    (["attack=prune", "attack.rate=1.5"], r"attack\.rate=1\.5"),
    (["attack=prune", "attack.rate=0"], r"attack\.rate=0"),
    (["attack=probe"], r"hidden states"),
    (["attack=logit_lens"], r"hidden states"),
])
def test_bad_settings_are_refused_before_training(overrides, match, tmp_path):
    cfg = compose_config(*TINY, f"cache_dir={tmp_path}", *overrides)
    with pytest.raises(ConfigError, match=match):
        Experiment(cfg)
    assert not any(tmp_path.iterdir())  # nothing was trained or cached


@pytest.mark.parametrize("attack", ["logit_lens", "probe", "ablate"])
def test_a_layer_beyond_the_depth_is_refused(attack, tmp_path):
    cfg = compose_config(*TINY_LLM, f"cache_dir={tmp_path}", f"attack={attack}", "attack.layer=3")
    with pytest.raises(ConfigError, match=r"attack\.layer=3 is beyond the model's depth: it has 2"):
        Experiment(cfg)
