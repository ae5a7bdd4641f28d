"""Prompts with some token embeddings replaced: the soft prompts of AdvUnlearn's inner attack and of the
adversarial-prompt attacks, and textual inversion's new token.

`encode_replacing` runs a model's own text encoder (`TextConditionedDiffusion.encode_text`, any CLIPTextModel:
the tiny one and Stable Diffusion's) with the outputs of its token-embedding layer overwritten where `mask` is
set, through a forward hook, so position embeddings, the causal mask and the final norm stay the encoder's own
and gradients reach the replacing vectors.
"""
from __future__ import annotations

import torch

from unlearn.errors import ConfigError


def insert_slots(ids: torch.Tensor, k: int, pad_id: int, position: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with `k` slots inserted at `position` (after BOS), mask of the slots), both (B, L): the prompt moves
    right by k and its padding shrinks. The slots hold `pad_id` (their embeddings are meant to be replaced).
    Raises ConfigError if a prompt's tokens (EOS included) would be pushed out of the L positions."""
    if k < 1:
        raise ConfigError(f"need at least one inserted token, got {k}")
    n, length = ids.shape
    # Only padding may fall off the end, and one padding/EOS token must stay after the prompt.
    if k >= length - position or bool((ids[:, length - k - 1:] != pad_id).any()):
        raise ConfigError(f"{k} inserted tokens do not fit: the prompts use {int((ids != pad_id).sum(1).max())} of "
                          f"the text encoder's {length} positions (choose fewer tokens)")
    slots = torch.full((n, k), pad_id, dtype=ids.dtype, device=ids.device)
    out = torch.cat([ids[:, :position], slots, ids[:, position : length - k]], 1)
    mask = torch.zeros_like(out, dtype=torch.bool)
    mask[:, position : position + k] = True
    return out, mask


def encode_replacing(model, ids: torch.Tensor, mask: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Text states (B, L, D) of `ids` (B, L) whose token embeddings at `mask` (B, L, bool) are `vectors`:
    (mask.sum(), D), or (k, D) used for every row when each row masks k positions."""
    layer = model.text_encoder.get_input_embeddings()
    count = int(mask.sum())
    if vectors.shape[0] != count:
        vectors = vectors.repeat(count // max(vectors.shape[0], 1), 1)
    if vectors.shape[0] != count:
        raise ValueError(f"{count} masked positions, {vectors.shape[0]} vectors")

    def replace(_module, _inputs, output):
        output = output.clone()
        output[mask.to(output.device)] = vectors.to(output)
        return output

    handle = layer.register_forward_hook(replace)
    try:
        return model.encode_text(ids)
    finally:
        handle.remove()


def pad_token_id(model) -> int:
    """The id the tokenizer pads with (CLIP's EOS when it has no pad token)."""
    tokenizer = model.tokenizer
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
