"""The text-to-image run's generations.png: each prompt once (target, synonym, held-out, neighbour, others), one
row per model, and a prompt attack's model draws the target prompts from the attack's adversarial text (an
untrained tiny model and random adversarial states: what is checked is the picture, not the erasure)."""
from __future__ import annotations

import pytest
import torch
from matplotlib.image import imread

from unlearn.attacks.prompts import AttackedPrompts
from unlearn.data.concept import ConceptForget
from unlearn.data.shapes_t2i import load_shapes_t2i, vocabulary
from unlearn.models.t2i import TinyTextToImage
from unlearn.runtime import Runtime
from unlearn.tasks.t2i import TextToImageTask, draw_generations


@pytest.fixture(scope="module")
def world():
    return load_shapes_t2i(train_per_combo=1, test_per_combo=1, val_per_combo=0, image_size=8)


@pytest.fixture
def one_thread():
    """A tiny model is overhead-bound: one thread, as `threads=1` gives the pipeline's runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def task_for(world, concept: str) -> TextToImageTask:
    task = TextToImageTask(sampling_steps=2, picture_samples=1)
    task.use_world(world, ConceptForget(concept).resolve(world))
    return task


@pytest.mark.parametrize("concept, groups", [
    ("circle", ["target"] * 3 + ["synonym", "held out", "neighbour"] + ["other"] * 3),  # disc; its neighbour: ring
    ("red", ["target"] * 3 + ["synonym", "held out", "neighbour"] + ["other"] * 3),     # crimson; orange
    ("white", ["target"] * 3 + ["held out"] + ["other"] * 3),                          # no synonym, no neighbour
])
def test_each_prompt_is_shown_once_with_its_group(world, concept, groups):
    task = task_for(world, concept)
    chosen = task.picture_prompts()
    texts = [task.prompts[p] for _, p in chosen]
    assert [g for g, _ in chosen] == groups and len(set(texts)) == len(texts)
    assert all(concept in text.split() for (g, _), text in zip(chosen, texts) if g in ("target", "held out"))
    assert not any(concept in text.split() for (g, _), text in zip(chosen, texts) if g in ("neighbour", "other"))


def test_draw_generations_lays_out_one_row_per_model(tmp_path):
    colours = {"original": -1.0, "retrain (oracle)": 0.0, "ga + prompt attack": 1.0}
    rows = {label: torch.full((4, 3, 8, 8), value) for label, value in colours.items()}
    draw_generations(rows, ["a red circle [target]", "a blue square [other]"], 2, "erasing 'red'", tmp_path / "g.png")
    picture = imread(tmp_path / "g.png")
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0] / 2 and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="2 prompts × 2 samples need 4 images per row"):
        draw_generations({"original": torch.zeros(3, 3, 8, 8)}, ["a", "b"], 2, "", tmp_path / "bad.png")


def test_an_attacked_model_draws_the_target_prompts_from_the_adversarial_text(world, tmp_path, one_thread):
    torch.manual_seed(0)
    model = TinyTextToImage(vocabulary(), sample_size=8, block_out_channels=(16, 32), text_width=32).eval()
    task, runtime = task_for(world, "circle"), Runtime.from_config("cpu")
    targets = task.groups["target"][0]
    ids = task.token_ids(model)[targets]
    attacked = AttackedPrompts(model, ids, 3 * torch.randn(model.encode_text(ids).shape))
    task.save_pictures(tmp_path, {"original": model, "original + prompt attack": attacked}, runtime, seed=0)
    assert imread(tmp_path / "generations.png").shape[0] > 100
    # the same noise: the attacked row differs from the model's own exactly where a target prompt is drawn
    chosen = task.picture_prompts()
    prompts = torch.tensor([p for _, p in chosen])
    plain, adversarial = task.sample(model, prompts, runtime, 0), task.sample(attacked, prompts, runtime, 0)
    moved = (plain - adversarial).flatten(1).abs().amax(1) > 1e-6
    assert moved.tolist() == [bool(torch.isin(p, targets)) for p in prompts] and moved[:3].all()
