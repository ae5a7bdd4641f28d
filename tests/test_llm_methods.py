"""The LLM methods (NPO, SimNPO, IdkDPO, IdkPO, FLAT, RMU) and the composable weight masks through the real
pipeline on tiny facts, and bad input refused before anything trains."""
import json
from pathlib import Path

import pytest

from conftest import compose_config
from test_llm import ADAMW, TINY_LLM
from unlearn.errors import ConfigError, UnsupportedTaskError
from unlearn.pipeline import Experiment

METHODS = {
    "npo": ["method=npo", "method.lr=1e-3", "method.epochs=5"],
    "npo+wagle": ["method=npo", "method.lr=1e-3", "method.epochs=5", "method.mask=wagle", "method.mask_ratio=0.5"],
    "simnpo": ["method=simnpo", "method.lr=2e-3", "method.epochs=5"],
    "idkdpo": ["method=idkdpo", "method.lr=1e-3", "method.epochs=5"],
    "idkpo": ["method=idkpo", "method.lr=1e-3", "method.epochs=5"],
    "flat-tv": ["method=flat", "method.lr=5e-4", "method.epochs=5"],
    "flat-kl": ["method=flat", "method.divergence=kl", "method.average=padded", "method.lr=5e-4", "method.epochs=5"],
    "rmu": ["method=rmu", "method.lr=1e-2", "method.alpha=1", "method.steering_coeff=20", "method.epochs=5"],
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_llm_methods_forget_through_the_pipeline(run_experiment, method):
    row = run_experiment(*TINY_LLM, *ADAMW, *METHODS[method], tiny=False)
    original, metrics = row["reference"]["original"], row["metrics"]
    assert row["status"] == "ok" and row["method"] == method
    assert {"model_utility", "privleak", "forget_quality"} <= set(metrics)
    # a no-op would leave the original's forget probability exactly where it was
    assert metrics["forget_prob"] < original["forget_prob"] - 0.05
    ratios = json.loads((Path(row["run_dir"]) / "truth_ratios.json").read_text())
    assert set(ratios) == {"original", "retrain (oracle)", method}
    assert len(ratios[method]["forget"]) == row["forget"]["size"] and ratios[method]["world"]


def test_wagle_mask_keeps_the_unmasked_weights_at_the_original(run_experiment, shared_cache, tmp_path):
    """Under AdamW with weight decay, only the masked-in share of weights moves; the mask is cached."""
    overrides = [*TINY_LLM, *ADAMW, "method=graddiff", "method.mask=wagle", "method.mask_ratio=0.3",
                 "method.weight_decay=0.1", "method.lr=5e-4", "method.epochs=3"]
    row = run_experiment(*overrides, tiny=False)
    assert row["method"] == "graddiff+wagle" and row["method_params"]["mask"] == "wagle"
    cfg = compose_config(*overrides, f"cache_dir={shared_cache}")
    experiment = Experiment(cfg)
    original = experiment.prepare().original
    from transformers import AutoModelForCausalLM

    unlearned = AutoModelForCausalLM.from_pretrained(Path(row["run_dir"]) / "model")
    params = dict(original.named_parameters())
    moved = sum(int((p != params[n]).sum()) for n, p in unlearned.named_parameters())
    total = sum(p.numel() for p in params.values())
    assert 0.05 < moved / total <= 0.3 + 1 / total  # the mask keeps round(0.3·total) weights
    assert any(p.name.startswith("weight-mask") for p in Path(shared_cache).iterdir())


@pytest.mark.parametrize("overrides, match", [
    (["method=flat", "method.divergence=hellinger"], "divergence"),
    (["method=npo", "method.beta=0"], "beta"),
    (["method=npo", "method.mask_ratio=0"], "mask_ratio"),
    (["method=graddiff", "method.mask_ratio=1.5"], "mask_ratio"),
    (["method=graddiff", "method.mask=snip"], "mask"),
    (["method=rmu", "method.layer=2"], "2 decoder layers"),
])
def test_bad_llm_method_input_is_refused_before_training(tmp_path, overrides, match):
    cfg = compose_config(*TINY_LLM, f"cache_dir={tmp_path / 'cache'}", *overrides)
    with pytest.raises(ConfigError, match=match):
        Experiment(cfg)
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("method", ["npo", "simnpo", "idkdpo", "flat", "rmu"])
def test_llm_only_methods_are_refused_on_other_tasks(method):
    with pytest.raises(UnsupportedTaskError, match="llm"):
        Experiment(compose_config(f"method={method}", "device=cpu"))


def test_wagle_mask_runs_on_classification(run_experiment):
    row = run_experiment("method=graddiff", "method.mask=wagle", "method.mask_ratio=0.5", "method.lr=0.05",
                         "method.epochs=5", "method.batch_size=16")
    assert row["status"] == "ok" and row["method"] == "graddiff+wagle"
    assert row["metrics"]["UA"] > row["reference"]["original"]["UA"]  # ascent under the mask still forgets


def test_wagle_mask_runs_on_diffusion(run_experiment):
    from test_diffusion import ADAM, TINY_DIFFUSION

    row = run_experiment(*TINY_DIFFUSION, "method=graddiff", *ADAM, "method.mask=wagle", "method.mask_ratio=0.5", tiny=False)
    assert row["status"] == "ok" and row["method"] == "graddiff+wagle"
    # ascent on the forget class's denoising loss still works through the mask
    assert row["metrics"]["forget_mse"] > 1.2 * row["reference"]["original"]["forget_mse"]


def test_idkpo_runs_on_classification_as_wrong_label_training(run_experiment):
    """IdkPO's idea (NLL on the task's wrong target + retain NLL) carries over: on digits the target is a
    random wrong class."""
    row = run_experiment("method=idkpo", "method.lr=0.05", "method.epochs=5", "method.batch_size=16",
                         "method.optimizer=sgd", "method.weight_decay=5e-4")
    assert row["status"] == "ok" and row["metrics"]["UA"] > row["reference"]["original"]["UA"]
