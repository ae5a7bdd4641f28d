"""Text-to-image pieces on known answers: the world, the word-level tokenizer, the concept request, relabel,
UCE's closed form, and the erasure metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearn.data.concept import ConceptForget, replace_word
from unlearn.data.shapes_t2i import (AXES, HELD_OUT_TEMPLATE, TEMPLATES, WORD_TEMPLATE, load_shapes_t2i, prompt_table,
                                     vocabulary)
from unlearn.errors import ConfigError, ShapeError
from unlearn.eval.t2i import cross_axis_accuracy, retain_accuracy, unlearning_accuracy
from unlearn.methods.uce import uce_edit
from unlearn.models.t2i import word_level_tokenizer
from unlearn.tasks.t2i import TextToImageTask


@pytest.fixture(scope="module")
def world():
    return load_shapes_t2i(train_per_combo=4, test_per_combo=1, val_per_combo=0)


# ---- the world --------------------------------------------------------------------------------------
def test_world_is_deterministic_and_labelled(world):
    again = load_shapes_t2i(train_per_combo=4, test_per_combo=1, val_per_combo=0)
    assert torch.equal(world.train["x"], again.train["x"]) and torch.equal(world.train["prompt"], again.train["prompt"])
    other = load_shapes_t2i(train_per_combo=4, test_per_combo=1, val_per_combo=0, seed=1)
    assert not torch.equal(world.train["x"], other.train["x"])
    assert world.train["x"].shape == (75 * 4, 3, 16, 16)
    assert world.train["x"].min() >= -1 and world.train["x"].max() <= 1
    texts, table = world.info["prompts"], prompt_table()
    for i in range(0, len(world.train), 7):  # a prompt names the item's value on every axis (or its synonym) ...
        prompt = int(world.train["prompt"][i])
        words = texts[prompt].split()
        named = [value in words or world.info["synonyms"].get(value) in words
                 for value in (values[int(world.train[axis][i])] for axis, values in AXES.items())]
        if table["template"][prompt] == WORD_TEMPLATE:  # ... or is one of them alone
            assert len(words) == 1 and sum(named) == 1
        else:
            assert all(named)


def test_one_word_prompts_train_at_their_rate_and_only_in_train():
    data = load_shapes_t2i(train_per_combo=16, test_per_combo=2, val_per_combo=0, word_prompt_rate=0.1)
    assert 0.07 < data.info["word_prompt_share"] < 0.13
    table = prompt_table()
    assert all(table["template"][int(p)] != WORD_TEMPLATE for p in data.test["prompt"])
    assert "red" in data.info["prompts"] and "crimson" in data.info["prompts"]


def test_held_out_template_never_trains_but_uses_training_words(world):
    table = prompt_table()
    held_out = len(TEMPLATES)
    used = {table["template"][int(p)] for p in world.train["prompt"]}
    assert held_out not in used and used == {*range(len(TEMPLATES)), WORD_TEMPLATE}
    training_words = {w for t in TEMPLATES for w in t.split() if not w.startswith("{")}
    assert {w for w in HELD_OUT_TEMPLATE.split() if not w.startswith("{")} <= training_words


def test_synonyms_appear_in_about_a_fifth_of_training_prompts():
    data = load_shapes_t2i(train_per_combo=16, test_per_combo=1, val_per_combo=0)
    assert 0.15 < data.info["synonym_share"] < 0.27


def test_word_level_tokenizer_gives_each_word_one_token():
    words = vocabulary()
    tokenizer = word_level_tokenizer(words, max_length=12)
    ids = tokenizer("a crimson disc on a grey background")["input_ids"]
    assert len(ids) == 7 + 2  # BOS + 7 words + EOS
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids[1:-1]] == [w + "</w>" for w in
                                                                       "a crimson disc on a grey background".split()]
    vocab = tokenizer.get_vocab()
    assert max(vocab.values()) == vocab["<|endoftext|>"]  # special tokens last


# ---- the concept request ------------------------------------------------------------------------------
def test_concept_infers_axis_synonyms_neighbour_and_defaults(world):
    request = ConceptForget("crimson").resolve(world)
    assert (request.concept, request.axis, request.value, request.words) == ("red", "colour", 0, ("red", "crimson"))
    assert request.neighbour == "orange" and request.anchor == "yellow"  # the next value that is not the neighbour
    assert request.guide == "" and request.preserve == ("orange", "yellow", "green", "blue")
    shape = ConceptForget("circle", guide="square", anchor="cross").resolve(world)
    assert (shape.axis, shape.neighbour, shape.guide, shape.anchor) == ("shape", "ring", "square", "cross")


def test_concept_forget_set_is_every_item_that_shows_or_names_it(world):
    forget = ConceptForget("red").build(world, seed=0)
    names_red = world.train["colour"].numpy() == 0
    assert np.array_equal(forget.indices, np.flatnonzero(names_red))
    assert forget.description["concept"] == "red" and forget.description["axis"] == "colour"


@pytest.mark.parametrize("kwargs, message", [
    ({"concept": "purple"}, "not a concept"),
    ({"concept": "red", "guide": "crimson"}, "names the concept"),
    ({"concept": "red", "anchor": "circle"}, "must be another colour"),
    ({"concept": "red", "preserve": ["crimson"]}, "contains the concept"),
])
def test_bad_concept_requests_are_refused(world, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ConceptForget(**kwargs).check(world)


def test_guide_equal_to_the_concept_is_refused_at_once():
    with pytest.raises(ConfigError, match="concept itself"):
        ConceptForget("red", guide="red")


def test_concept_on_data_without_prompts_is_refused():
    from unlearn.data.sources import load_digits

    with pytest.raises(ConfigError, match="needs a data set with prompts"):
        ConceptForget("red").check(load_digits(limit=50))


def test_relabel_replaces_the_concept_by_the_anchor(world):
    task = TextToImageTask()
    builder = ConceptForget("red")
    task.check_forget(builder)
    task.use_world(world, builder.resolve(world))
    lookup = {t: i for i, t in enumerate(task.prompts)}
    prompts = torch.tensor([lookup["a red circle on black"], lookup["a crimson ring on white"],
                            lookup["a box in crimson on a gray background"]])
    pseudo = task.relabel({"prompt": prompts}, torch.Generator())["pseudo_prompt"]
    assert [task.prompts[int(p)] for p in pseudo] == ["a yellow circle on black", "a yellow ring on white",
                                                      "a box in yellow on a gray background"]
    assert replace_word("a red circle on black", "red", "") == "a circle on black"
    assert len(task.concept_prompt_ids) == 5 * 3 * len(TEMPLATES)  # shapes × backgrounds × training templates
    assert all("red" in task.prompts[int(i)].split() for i in task.concept_prompt_ids)


def test_a_validation_concept_is_another_of_the_same_axis_apart_from_the_request(world):
    builder = ConceptForget("white", guide="black")
    reported = builder.build(world, seed=0)
    drawn = {builder.validation(world, reported, seed=s).description["concept"] for s in range(8)}
    assert drawn == {"gray"}  # the background axis has three values: not white (the request), not black (its guide)
    validation = builder.validation(world, reported, seed=1)
    assert validation.description["validation"] and validation.description["axis"] == "background"
    assert not set(validation.indices.tolist()) & set(reported.indices.tolist())
    colours = {ConceptForget("red").validation(world, ConceptForget("red").build(world, 0), seed=s).description["concept"]
               for s in range(12)}
    assert colours <= {"orange", "yellow", "green", "blue"} and len(colours) > 1  # drawn from the seed
    with pytest.raises(ConfigError, match="cannot be drawn"):
        ConceptForget("white", guide="black").check_validation(
            type(world)(name="two", train=world.train, val=world.val, test=world.test,
                        info={**world.info, "axes": {**world.info["axes"], "background": ["black", "white"]}}))


def test_the_task_erases_the_validation_concept_then_its_own_request_with_its_knobs(world):
    task = TextToImageTask()
    builder = ConceptForget("red", anchor="blue")
    task.check_forget(builder)
    task.use_world(world, builder.resolve(world))
    validation = builder.validation(world, builder.build(world, 0), seed=0)
    task.use_request(world, validation)
    assert task.request.concept == validation.description["concept"] != "red"
    task.use_request(world, builder.build(world, 0))
    assert task.request.concept == "red" and task.request.anchor == "blue"  # the run's own knobs, not the defaults


# ---- UCE's closed form -------------------------------------------------------------------------------
def test_uce_maps_an_erased_direction_toward_its_guide_and_leaves_orthogonal_ones():
    torch.manual_seed(0)
    weight = torch.randn(3, 4, dtype=torch.float64)
    e = torch.eye(4, dtype=torch.float64)
    new = uce_edit(weight, erase=e[:1], guide=e[1:2], preserve=None, lam=0.5)
    # (λW + W g cᵀ)(λI + c cᵀ)⁻¹ c = (λ W c + W g)/(λ + 1) for a unit c; directions ⟂ c keep W's output.
    assert torch.allclose(new @ e[0], (0.5 * weight @ e[0] + weight @ e[1]) / 1.5)
    for k in (1, 2, 3):
        assert torch.allclose(new @ e[k], weight @ e[k])
    # A strong erase scale sends the erased direction (almost) exactly to the guide's output.
    strong = uce_edit(weight, erase=e[:1], guide=e[1:2], preserve=None, lam=0.5, erase_scale=1e6)
    assert torch.allclose(strong @ e[0], weight @ e[1], atol=1e-5)


def test_uce_edit_is_the_minimiser_of_its_objective():
    torch.manual_seed(1)
    weight = torch.randn(5, 6, dtype=torch.float64)
    erase, guide, preserve = (torch.randn(n, 6, dtype=torch.float64) for n in (3, 3, 4))
    lam, s_e, s_p = 0.3, 2.0, 0.7
    new = uce_edit(weight, erase, guide, preserve, lam, s_e, s_p).requires_grad_(True)
    objective = (s_e * (new @ erase.T - weight @ guide.T).pow(2).sum()
                 + s_p * (new @ preserve.T - weight @ preserve.T).pow(2).sum() + lam * (new - weight).pow(2).sum())
    objective.backward()
    assert new.grad.abs().max() < 1e-9  # stationary point of a strictly convex objective


def test_uce_edit_checks_shapes_and_keeps_dtype():
    weight = torch.randn(3, 4)
    assert uce_edit(weight, torch.randn(2, 4), torch.randn(2, 4), torch.randn(1, 4)).dtype == torch.float32
    with pytest.raises(ShapeError):
        uce_edit(weight, torch.randn(2, 5), torch.randn(2, 5), None)
    with pytest.raises(ShapeError):
        uce_edit(weight, torch.randn(2, 4), torch.randn(3, 4), None)


# ---- metrics -----------------------------------------------------------------------------------------
def test_unlearning_accuracy_counts_generations_not_judged_the_concept():
    assert unlearning_accuracy(np.array([0, 0, 1, 2]), concept=0) == pytest.approx(50.0)
    assert unlearning_accuracy(np.array([3, 3]), concept=0) == pytest.approx(100.0)
    assert np.isnan(unlearning_accuracy(np.array([], dtype=int), concept=0))
    assert np.isnan(unlearning_accuracy(np.array([0.0, np.nan]), concept=0))
    with pytest.raises(ShapeError):
        unlearning_accuracy(np.zeros((2, 2)), concept=0)


def test_retain_accuracy_averages_per_prompted_value():
    prompted = np.array([1, 1, 1, 1, 2, 2])
    judged = np.array([1, 1, 1, 0, 2, 0])
    assert retain_accuracy(judged, prompted) == pytest.approx((75.0 + 50.0) / 2)
    with pytest.raises(ShapeError):
        retain_accuracy(judged, prompted[:3])


def test_cross_axis_accuracy_averages_axes():
    prompted = np.array([[0, 1], [0, 1], [1, 2], [1, 2]])
    judged = np.array([[0, 1], [1, 1], [1, 0], [1, 0]])
    # axis 0: value 0 → 50%, value 1 → 100% (mean 75); axis 1: value 1 → 100%, value 2 → 0% (mean 50)
    assert cross_axis_accuracy(judged, prompted) == pytest.approx(62.5)
    assert np.isnan(cross_axis_accuracy(np.zeros((0, 2)), np.zeros((0, 2))))
    with pytest.raises(ShapeError):
        cross_axis_accuracy(judged, prompted[:, :1])


@pytest.mark.parametrize("override, message", [
    ("method=uce method.lam=0", "lam"), ("method=esd method.train=y", "train"),
    ("method=esd method.eta=-1", "eta"), ("data.task.guidance_scale=-1", "guidance_scale"),
    ("model.cond_dropout=1", "cond_dropout"), ("data.source.synonym_rate=1.5", "synonym_rate"),
])
def test_t2i_knobs_are_range_checked_before_anything_runs(override, message):
    from unlearn.config import build, compose_config

    cfg = compose_config("data=shapes_t2i", *override.split())
    with pytest.raises(ConfigError, match=message):
        for node in (cfg.method, cfg.data.task, cfg.model, cfg.data.source):
            build(node)


def test_training_moves_the_unet_under_a_fixed_text_encoder(world):
    """The original and the oracle train the UNet only (as Stable Diffusion under its frozen CLIP), and with
    `text_layers=0` a word's text state does not depend on the rest of the prompt (only on its position)."""
    from unlearn.models.t2i import TinyTextToImage
    from unlearn.runtime import Runtime
    from unlearn.training import OptimConfig

    torch.manual_seed(0)
    model = TinyTextToImage(vocabulary(), sample_size=world.train["x"].shape[-1],
                            block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), text_width=32, text_layers=0)
    text_before = {n: p.clone() for n, p in model.text_encoder.named_parameters()}
    unet_before = {n: p.clone() for n, p in model.unet.named_parameters()}
    task = TextToImageTask()
    task.use_world(world, ConceptForget("red").resolve(world))
    task.fit(model, world.train.subset(torch.arange(16)), OptimConfig(epochs=1, lr=1e-3, batch_size=8, optimizer="adam"), Runtime.from_config("cpu"),
             torch.Generator().manual_seed(0))
    assert all(torch.equal(p, text_before[n]) for n, p in model.text_encoder.named_parameters())
    assert any(not torch.equal(p, unet_before[n]) for n, p in model.unet.named_parameters())

    states = model.encode_text(model.tokenize(["a red circle on black", "a red square on black"]))
    assert torch.allclose(states[0, 2], states[1, 2]) and not torch.allclose(states[0, 3], states[1, 3])
