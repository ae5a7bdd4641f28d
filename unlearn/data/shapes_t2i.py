"""A generated text-to-image world: small RGB images of a shape in a colour on a background, with prompts.

Three axes — shape (circle, ring, square, triangle, cross), colour (red, orange, yellow, green, blue) and
background (black, gray, white) — give 75 combinations, each drawn `train_per_combo` times with jitter
(position, size, colour, background). Every training image gets a prompt from one of the training templates;
some words have a synonym that replaces them in about 20% of training prompts, so the model learns both.
One template is held out of training (made of the same words, in another order), and the world has built-in
near neighbours (circle/ring, red/orange) whose damage a concept erasure should avoid. A share
(`word_prompt_rate`) of training images is captioned by one of its words alone ("red", "circle"), so that,
as in Stable Diffusion, the concept's own word is a prompt the model knows (ESD's prompt is the concept alone).

Every split carries, per image: `x` (3, H, W) in [-1, 1], `prompt` (an index into the world's prompt table,
`info["prompts"]`), the label of each axis (`shape`, `colour`, `background`) and `pseudo_prompt`, the prompt
whose frozen prediction is the denoising target (-1: the true noise; the task's `relabel` fills it in, as
`digits_gen`'s `pseudo_y`). The prompt table holds every combination under every template (training and
held-out) and every choice of synonyms, so any prompt the task builds (a concept replaced by another value,
a synonym, the held-out template) is a row of it.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE_INT, Range

NOISE_TARGET = -1  # pseudo_prompt of an example trained against the true noise

AXES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "ring", "square", "triangle", "cross"),
    "colour": ("red", "orange", "yellow", "green", "blue"),
    "background": ("black", "gray", "white"),
}
RGB = {"red": (0.9, 0.1, 0.1), "orange": (1.0, 0.55, 0.05), "yellow": (0.95, 0.9, 0.1), "green": (0.1, 0.75, 0.2),
       "blue": (0.15, 0.3, 0.95)}
GREY_LEVEL = {"black": 0.05, "gray": 0.5, "white": 0.95}
SYNONYMS = {"red": "crimson", "blue": "azure", "circle": "disc", "square": "box", "gray": "grey"}
NEIGHBOURS = (("circle", "ring"), ("red", "orange"))
TEMPLATES = (
    "a {colour} {shape} on {background}",
    "a {shape} in {colour} on a {background} background",
    "{background} background with a {colour} {shape}",
)
HELD_OUT_TEMPLATE = "a {colour} {shape} on a {background} background"
WORD_TEMPLATE = len(TEMPLATES) + 1  # template id of the one-word prompts ("red"); the held-out one is len(TEMPLATES)
NO_LABEL = -1  # an axis a one-word prompt does not name
SUPERSAMPLE = 4  # shapes are drawn at 4x and average-pooled, for anti-aliased edges


def prompt_table() -> dict[str, list]:
    """Every prompt of the world: each combination × template (training ones, then the held-out one) ×
    choice of synonyms, then every word alone (values and synonyms). Returns parallel lists: text, the label of
    each axis (`NO_LABEL` for an axis a one-word prompt does not name), template id (the held-out one is
    `len(TEMPLATES)`, one-word prompts `WORD_TEMPLATE`), and whether any synonym is used."""
    table: dict[str, list] = {"text": [], "template": [], "synonym": [], **{axis: [] for axis in AXES}}
    for labels in itertools.product(*(range(len(v)) for v in AXES.values())):
        values = [AXES[axis][k] for axis, k in zip(AXES, labels)]
        choices = [(v, SYNONYMS[v]) if v in SYNONYMS else (v,) for v in values]
        for template_id, template in enumerate((*TEMPLATES, HELD_OUT_TEMPLATE)):
            for words in itertools.product(*choices):
                table["text"].append(template.format(**dict(zip(AXES, words))))
                table["template"].append(template_id)
                table["synonym"].append(any(w != v for w, v in zip(words, values)))
                for axis, k in zip(AXES, labels):
                    table[axis].append(k)
    for axis, values in AXES.items():
        for k, value in enumerate(values):
            for word in (value, SYNONYMS[value]) if value in SYNONYMS else (value,):
                table["text"].append(word)
                table["template"].append(WORD_TEMPLATE)
                table["synonym"].append(word != value)
                for other in AXES:
                    table[other].append(k if other == axis else NO_LABEL)
    return table


def vocabulary() -> list[str]:
    """The world's words, in a fixed order (a word-level tokenizer gives each one token)."""
    return sorted({word for text in prompt_table()["text"] for word in text.split()})


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Which points (offsets from the centre, in radii) a shape covers."""
    dist = np.hypot(dx, dy)
    if shape == "circle":
        return dist <= 1
    if shape == "ring":
        return (dist <= 1) & (dist >= 0.55)
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.82
    if shape == "triangle":  # apex up
        return (dy <= 0.8) & (dy >= -1) & (np.abs(dx) <= (dy + 1) / 1.8 * 1.05)
    if shape == "cross":
        return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1))
    raise ConfigError(f"unknown shape {shape!r}; the world's shapes are {AXES['shape']}")


RADIUS = 0.36  # a shape's mean radius, as a fraction of the image side


def render(labels: np.ndarray, size: int, rng: np.random.Generator, position_jitter: float = 0.04,
           size_jitter: float = 0.08) -> np.ndarray:
    """Images (N, 3, size, size) in [0, 1] for rows of (shape, colour, background) labels: each shape jittered
    in position (centre ± `position_jitter` of the side), size (radius ± `size_jitter` of itself) and colour,
    on a slightly noisy flat background, drawn at 4x and average-pooled."""
    count, n = len(labels), size * SUPERSAMPLE
    centre = (n - 1) / 2 + rng.uniform(-position_jitter, position_jitter, size=(count, 2)) * n
    radius = RADIUS * rng.uniform(1 - size_jitter, 1 + size_jitter, size=count) * n
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    dy = (yy[None] - centre[:, 0, None, None]) / radius[:, None, None]
    dx = (xx[None] - centre[:, 1, None, None]) / radius[:, None, None]
    inside = np.zeros((count, n, n), dtype=np.float32)
    for k, shape in enumerate(AXES["shape"]):
        rows = labels[:, 0] == k
        inside[rows] = _inside(shape, dx[rows], dy[rows])
    cover = inside.reshape(count, size, SUPERSAMPLE, size, SUPERSAMPLE).mean((2, 4))[:, None]
    rgb = np.array([RGB[c] for c in AXES["colour"]])[labels[:, 1]]
    ink = np.clip(rgb + rng.normal(0, 0.04, size=(count, 3)), 0, 1)[:, :, None, None]
    level = np.array([GREY_LEVEL[b] for b in AXES["background"]])[labels[:, 2]]
    level = np.clip(level + rng.normal(0, 0.03, size=count), 0, 1)[:, None, None, None]
    back = np.clip(level + rng.normal(0, 0.01, size=(count, 3, size, size)), 0, 1)
    return (cover * ink + (1 - cover) * back).astype(np.float32)


def _draw(per_combo: int, size: int, rng: np.random.Generator, synonym_rate: float, word_prompt_rate: float,
          lookup: dict[str, int], jitter: tuple[float, float]) -> TensorData:
    combos = np.array(list(itertools.product(*(range(len(v)) for v in AXES.values()))))
    labels = np.repeat(combos, per_combo, axis=0)
    prompts = []
    for row in labels:
        values = [AXES[axis][k] for axis, k in zip(AXES, row)]
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        words = [SYNONYMS[v] if v in SYNONYMS and rng.random() < synonym_rate else v for v in values]
        one_word = rng.random() < word_prompt_rate
        prompts.append(lookup[words[int(rng.integers(len(words)))] if one_word else
                              template.format(**dict(zip(AXES, words)))])
    x = torch.from_numpy(render(labels, size, rng, *jitter)) * 2 - 1
    prompt = torch.tensor(prompts, dtype=torch.long)
    return TensorData(x=x.contiguous(), prompt=prompt, pseudo_prompt=torch.full_like(prompt, NOISE_TARGET),
                      **{axis: torch.from_numpy(labels[:, a].copy()) for a, axis in enumerate(AXES)})


def load_shapes_t2i(image_size: int = 16, train_per_combo: int = 16, val_per_combo: int = 1, test_per_combo: int = 4,
                    synonym_rate: float = 0.2, word_prompt_rate: float = 0.1, position_jitter: float = 0.04,
                    size_jitter: float = 0.08, seed: int = 0) -> DataBundle:
    """The world, deterministic for `seed` (see the module docstring). `synonym_rate` is the chance that a
    word with a synonym is written as the synonym in a training prompt; `word_prompt_rate` the chance that a
    training image's prompt is one of its words alone (only in train; evaluation uses the templates);
    `position_jitter` and `size_jitter` as in `render`."""
    if image_size < 8:
        raise ConfigError(f"data.image_size={image_size}: shapes need at least 8x8 pixels")
    if train_per_combo < 1 or test_per_combo < 1 or val_per_combo < 0:
        raise ConfigError(f"need data.source.train_per_combo >= 1, test_per_combo >= 1 and val_per_combo >= 0; got "
                          f"{train_per_combo}, {test_per_combo} and {val_per_combo}")
    table = prompt_table()
    lookup = {text: i for i, text in enumerate(table["text"])}
    rng = np.random.default_rng(seed)
    splits = {name: _draw(max(n, 1), image_size, rng, synonym_rate, word_prompt_rate if name == "train" else 0.0,
                          lookup, (position_jitter, size_jitter))
              for name, n in (("train", train_per_combo), ("val", val_per_combo), ("test", test_per_combo))}
    info: dict[str, Any] = {
        "image_size": int(image_size), "axes": {axis: list(v) for axis, v in AXES.items()},
        "synonyms": dict(SYNONYMS), "neighbours": [list(pair) for pair in NEIGHBOURS],
        "templates": list(TEMPLATES), "held_out_template": HELD_OUT_TEMPLATE,
        "prompts": table["text"], "prompt_labels": {axis: table[axis] for axis in AXES},
        "prompt_template": table["template"], "prompt_synonym": table["synonym"],
        "synonym_share": float(np.mean([table["synonym"][i] for i in splits["train"]["prompt"].tolist()])),
        "word_prompt_share": float(np.mean([table["template"][i] == WORD_TEMPLATE
                                            for i in splits["train"]["prompt"].tolist()])),
    }
    return DataBundle(name="shapes_t2i", train=splits["train"], val=splits["val"], test=splits["test"], info=info)


load_shapes_t2i.knobs = {"image_size": Range(8, integer=True), "train_per_combo": COUNT, "val_per_combo": NON_NEGATIVE_INT,
                         "test_per_combo": COUNT, "synonym_rate": FRACTION, "word_prompt_rate": FRACTION,
                         "position_jitter": Range(0, 0.2), "size_jitter": Range(0, 0.3), "seed": NON_NEGATIVE_INT}
