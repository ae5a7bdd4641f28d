"""Concept erasure through the real pipeline on a tiny text-to-image world: every method raises UA above the
original's (a no-op would leave it exactly equal: same noise, same generations) and moves only the parameters
it should; bad requests fail before anything trains."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unlearn.errors import ConfigError, UnlearnError
from unlearn.pipeline import Experiment

from conftest import compose_config

# A tiny world (2 images per combination, 8x8 pixels) and model; a short DDIM; one thread. The tiny model
# learns backgrounds first, so the tests erase one ("white": no synonym, no near neighbour).
TINY_WORLD = [
    "data=shapes_t2i", "forget.concept=white", "device=cpu", "threads=1",
    "data.image_size=8", "data.source.train_per_combo=2", "data.source.test_per_combo=1",
    "data.source.val_per_combo=0", "data.train.epochs=30", "data.train.lr=3e-3",
    "data.task.samples_per_prompt=1", "data.task.sampling_steps=8", "data.task.judge_train.epochs=15",
    "data.task.picture_samples=1",
]
TINY_T2I = [*TINY_WORLD, "model.block_out_channels=[16,32]", "model.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
            "model.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "model.text_width=32"]
METHODS = {
    "esd-x": ["method=esd", "method.train=x", "method.sampling_steps=8", "method.epochs=30"],
    "esd-u": ["method=esd", "method.train=u", "method.sampling_steps=8", "method.epochs=30"],
    "uce": ["method=uce"],
    "salun": ["method=salun"],
    "rl": ["method=rl"],
    "ga": ["method=ga", "method.lr=2e-3", "method.epochs=3"],
    "graddiff": ["method=graddiff", "method.lr=2e-3", "method.epochs=3"],
}


def changed_parameters(unlearned: torch.nn.Module, original: torch.nn.Module) -> dict[str, float]:
    """Fraction of entries that moved, per parameter that moved at all."""
    before = dict(original.named_parameters())
    moved = {}
    for name, param in unlearned.named_parameters():
        share = float((param != before[name]).float().mean())
        if share > 0:
            moved[name] = share
    return moved


def unlearned_and_moved(overrides: list[str], row: dict, cache) -> tuple[torch.nn.Module, dict[str, float]]:
    """The run's saved unlearned model and the parameters it moved from the (cached) original."""
    experiment = Experiment(compose_config(*overrides, f"cache_dir={cache}"))
    base = experiment.prepare().original
    unlearned = experiment.models.model_from_state(torch.load(Path(row["run_dir"]) / "model.pt"))
    return unlearned, changed_parameters(unlearned, base)


@pytest.mark.parametrize("method", list(METHODS))
def test_methods_erase_the_concept(method, run_experiment, shared_cache):
    overrides = [*TINY_T2I, *METHODS[method]]
    row = run_experiment(*overrides, tiny=False)
    assert row["status"] == "ok" and row["task"] == "t2i"
    metrics, original = row["metrics"], row["reference"]["original"]
    assert set(metrics) >= {"UA", "UA_held_out", "IRA", "CRA", "in_prompt_retain", "fd", "gen_acc_background"}
    assert not {"UA_synonym", "neighbour_retain"} & set(metrics)  # white has no synonym and no near neighbour
    assert metrics["UA"] >= original["UA"] + 10, (metrics["UA"], original["UA"])
    assert (Path(row["run_dir"]) / "generations.png").stat().st_size > 5_000

    unlearned, moved = unlearned_and_moved(overrides, row, shared_cache)
    assert moved
    if method == "esd-x":
        assert all(".attn2." in n and n.startswith("unet.") for n in moved)
    elif method == "esd-u":
        assert all(".attn2." not in n and n.startswith("unet.") for n in moved)
    elif method == "uce":
        kv = {f"unet.{n}.weight" for n in unlearned.cross_attention_projections()}
        assert set(moved) == kv
    elif method == "salun":
        total = sum(p.numel() for p in unlearned.parameters())
        entries = sum(round(share * dict(unlearned.named_parameters())[n].numel()) for n, share in moved.items())
        assert 0.2 * total < entries <= round(0.5 * total)  # only the salient half may move


def _nothing_written(cache: Path) -> bool:
    return not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("overrides, error, message", [
    (["forget.concept=purple"], ConfigError, "not a concept"),
    (["forget.concept=red", "forget.guide=crimson"], ConfigError, "names the concept"),
])
def test_bad_concept_requests_fail_before_training(tmp_path, overrides, error, message):
    cache = tmp_path / "cache"
    with pytest.raises(error, match=message):
        Experiment(compose_config(*TINY_T2I, *overrides, f"cache_dir={cache}")).run()
    assert _nothing_written(cache)


def test_the_t2i_task_refuses_example_wise_forgetting(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="forget=concept"):
        Experiment(compose_config("data=shapes_t2i", "forget=random", f"cache_dir={cache}"))
    assert _nothing_written(cache)


def test_concept_request_on_data_without_prompts_fails_before_training(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="needs a data set with prompts"):
        Experiment(compose_config("data=digits", "forget=concept", f"cache_dir={cache}")).run()
    assert _nothing_written(cache)


@pytest.mark.parametrize("method", ["uce", "esd"])
def test_cross_attention_methods_refuse_models_without_it(tmp_path, method):
    cache = tmp_path / "cache"
    with pytest.raises(UnlearnError, match="supports: t2i"):
        Experiment(compose_config("data=digits_gen", f"method={method}", f"cache_dir={cache}"))
    assert _nothing_written(cache)
    # A t2i model without cross-attention: refused from its config, before the judge or anything else trains.
    no_attention = ["model.down_block_types=[DownBlock2D,DownBlock2D]", "model.up_block_types=[UpBlock2D,UpBlock2D]"]
    with pytest.raises(ConfigError, match="has none: its down/up block types name no CrossAttn"):
        Experiment(compose_config(*TINY_T2I, f"method={method}", *no_attention, f"cache_dir={cache}")).run()
    assert _nothing_written(cache)
    with pytest.raises(ConfigError, match="needs cross-attention"):
        build_model_without_cross_attention()


def build_model_without_cross_attention():
    from unlearn.data.shapes_t2i import vocabulary
    from unlearn.models.t2i import TinyTextToImage

    return TinyTextToImage(vocabulary(), down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"))


def test_shapes_t2i_defaults_to_the_concept_request():
    cfg = compose_config("data=shapes_t2i")
    assert cfg.forget._target_.endswith("ConceptForget") and cfg.model._target_.endswith("TinyTextToImage")
    assert compose_config("data=shapes_t2i", "method=salun").method.optimizer == "adam"  # conf/tuned/shapes_t2i
