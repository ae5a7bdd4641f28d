"""The relearning attack through the real pipeline on every task kind: a few fine-tuning steps on part of the
forget set bring the forgotten behaviour back toward the original's (a no-op attack would leave it where the
method put it), the same attack runs on the original and the oracle, and bad settings fail before training."""
import math

import pytest
import torch

from conftest import TINY, compose_config
from test_diffusion import ADAM, TINY_DIFFUSION
from test_llm import ADAMW, METHODS, TINY_LLM
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.runtime import Runtime
from unlearn.data.tensordata import TensorData
from unlearn.training import OptimConfig, Streams, optimise

ATTACK = ["attack=relearn"]


def attacked_keys(row):
    return {k for k in row["metrics"] if k.startswith("relearn.")}


def test_relearn_brings_forgotten_digits_back(run_experiment):
    row = run_experiment("method=ga", "method.lr=0.05", "method.epochs=5", "method.batch_size=16", *ATTACK,
                         "attack.steps=10", "attack.lr=0.05")
    m, original, oracle = row["metrics"], row["reference"]["original"], row["reference"]["oracle"]
    assert row["status"] == "ok" and m["UA"] > original["UA"] + 5.0
    # Relearning on half of F pulls forget accuracy back toward the original's (UA = 100 − forget accuracy).
    assert m["relearn.UA"] < m["UA"] - 5.0
    assert {"relearn.UA", "relearn.RA", "relearn.TA", "relearn.MIA"} <= attacked_keys(row)
    assert attacked_keys(row) <= set(original) and attacked_keys(row) <= set(oracle)
    assert "relearn.UA" not in row["gap"]  # attacked metrics stay out of Avg. Gap


def test_relearn_brings_forgotten_facts_back(run_experiment):
    row = run_experiment(*TINY_LLM, *ADAMW, *METHODS["graddiff"], *ATTACK, "attack.steps=6", tiny=False)
    m = row["metrics"]
    assert row["status"] == "ok" and m["forget_prob"] < row["reference"]["original"]["forget_prob"] - 0.05
    assert m["relearn.forget_prob"] > m["forget_prob"] + 0.05
    assert row["reference"]["oracle"]["relearn.forget_prob"] > row["reference"]["oracle"]["forget_prob"]


def test_relearn_brings_the_forgotten_class_back_in_diffusion(run_experiment):
    row = run_experiment(*TINY_DIFFUSION, "method=ga", *ADAM, *ATTACK, "attack.steps=8", tiny=False)
    m = row["metrics"]
    assert row["status"] == "ok" and m["forget_mse"] > 1.5 * row["reference"]["original"]["forget_mse"]
    # The forget class becomes easy to denoise again.
    assert m["relearn.forget_mse"] < 0.8 * m["forget_mse"]


def test_reference_attacks_are_cached_and_deterministic(run_experiment, tmp_path):
    overrides = ["method=ga", "method.epochs=1", *ATTACK, "attack.steps=3", "attack.lr=0.05"]  # the recipe rate: moves the model
    first = run_experiment(*overrides, cache_dir=tmp_path / "c")
    second = run_experiment(*overrides, cache_dir=tmp_path / "c")
    assert first["reference"]["original"]["relearn.UA"] == second["reference"]["original"]["relearn.UA"]
    assert first["metrics"]["relearn.UA"] == second["metrics"]["relearn.UA"]  # same seed, same numbers
    assert len(list((tmp_path / "c").glob("attack-eval-*.safetensors"))) == 2  # the original's and the oracle's
    retain = run_experiment(*overrides, "attack.data=retain", cache_dir=tmp_path / "c")
    assert retain["reference"]["original"]["relearn.UA"] != first["reference"]["original"]["relearn.UA"] or \
        retain["metrics"]["relearn.RA"] != first["metrics"]["relearn.RA"]


def test_a_diverged_method_skips_the_attack(run_experiment):
    row = run_experiment("method=ga", "method.lr=1e30", "method.epochs=3", *ATTACK, "attack.steps=2")
    assert row["status"] == "diverged" and math.isnan(row["metrics"]["relearn.UA"])
    assert math.isfinite(row["reference"]["original"]["relearn.UA"])


def test_optimise_counts_steps_when_asked():
    seen = []
    model = torch.nn.Linear(1, 1)
    data = TensorData(x=torch.ones(10, 1))
    objective = lambda m, _f, r: (seen.append(len(r["x"])), m(r["x"]).pow(2).mean())[1]  # noqa: E731
    optimise(model, objective, Streams(retain=data), OptimConfig(epochs=1, lr=0.1, batch_size=4),
             Runtime.from_config("cpu"), torch.Generator().manual_seed(0), max_steps=7)
    assert seen == [4, 4, 2, 4, 4, 2, 4]  # two full epochs of 3 steps, then one step of the third


@pytest.mark.parametrize("bad,match", [
    ("attack.steps=0", r"attack\.steps=0 .* must be"),
    ("attack.fraction=0", r"attack\.fraction=0 .* must be"),
    ("attack.fraction=1.5", r"attack\.fraction=1\.5 .* must be"),
    ("attack.data=test", r"attack\.data='test' .* must be"),
])
def test_bad_attack_settings_fail_before_training(tmp_path, bad, match):
    cfg = compose_config(*TINY, *ATTACK, bad, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'out'}")
    with pytest.raises(ConfigError, match=match):
        Experiment(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
