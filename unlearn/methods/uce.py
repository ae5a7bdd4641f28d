"""UCE — Unified Concept Editing [Gandikota et al., WACV 2024]: a closed-form edit of every cross-attention
key/value projection, so that the text states of the erased concept produce what the guide's states produce,
while the preserved concepts' outputs stay put.

For W (d_out × d_in) the edit minimises Σ_E ‖W c_i − W_old g_i‖² + Σ_P ‖W c_j − W_old c_j‖² + λ‖W − W_old‖²_F:
    W = (λ W_old + s_e Σ_E W_old g_i c_iᵀ + s_p Σ_P W_old c_j c_jᵀ)(λ I + s_e Σ_E c_i c_iᵀ + s_p Σ_P c_j c_jᵀ)⁻¹.

Which states: for each of the concept's prompts (every training template × combination, canonical word) the
text-encoder states from the concept's token to the end (EOS and padding included, which the UNet also
attends to; the paper-era code's choice), each paired with the state at the same place of the guide prompt —
the prompt with the concept replaced by the guide word, or removed when the guide is the empty prompt (then the
concept's own token pairs with the token before it, the rest shift by one). Preserved: every token state of
the same prompts with the concept replaced by each preserved concept. The text encoder is not touched.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from unlearn.data.concept import replace_word
from unlearn.errors import ConfigError, ShapeError
from unlearn.knobs import NON_NEGATIVE, Range
from unlearn.methods.base import Method, UnlearnContext
from unlearn.models.t2i import require_cross_attention


def uce_edit(weight: torch.Tensor, erase: torch.Tensor, guide: torch.Tensor, preserve: Optional[torch.Tensor],
             lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float = 1.0) -> torch.Tensor:
    """UCE's closed form (module docstring) for one projection.

    weight (d_out, d_in); erase and guide (n_e, d_in): row i of `erase` should map to what row i of `guide`
    maps to under `weight`; preserve (n_p, d_in) or None: rows whose outputs should not move. Solved in float64;
    returned in the weight's dtype and device. Raises ShapeError on mismatched shapes, ValueError for lam <= 0.
    """
    if weight.dim() != 2:
        raise ShapeError(f"weight must have shape (d_out, d_in), got {tuple(weight.shape)}")
    d_in = weight.shape[1]
    for name, states in (("erase", erase), ("guide", guide), ("preserve", preserve)):
        if states is not None and (states.dim() != 2 or states.shape[1] != d_in):
            raise ShapeError(f"{name} must have shape (n, {d_in}), got {tuple(states.shape)}")
    if erase.shape != guide.shape:
        raise ShapeError(f"erase and guide must pair up row by row: shapes {tuple(erase.shape)} vs {tuple(guide.shape)}")
    if not lam > 0:
        raise ValueError(f"lam must be > 0 (it keeps the system invertible), got {lam}")
    w = weight.detach().double()
    c_e, g = erase.detach().to(w), guide.detach().to(w)
    left = lam * w + erase_scale * (w @ g.T) @ c_e
    right = lam * torch.eye(d_in, dtype=w.dtype, device=w.device) + erase_scale * c_e.T @ c_e
    if preserve is not None and len(preserve):
        c_p = preserve.detach().to(w)
        left = left + preserve_scale * (w @ c_p.T) @ c_p
        right = right + preserve_scale * c_p.T @ c_p
    # W = left · right⁻¹ with right symmetric positive definite: solve right · Wᵀ = leftᵀ.
    return torch.linalg.solve(right, left.T).T.to(weight.dtype)


def _span(model, text: str, word: str) -> tuple[int, int]:
    """(first token position, number of tokens) of the first whole `word` in `text`, BOS counted."""
    words = text.split()
    prefix = " ".join(words[: words.index(word)])
    before = len(model.tokenizer(prefix)["input_ids"]) - 1          # drop EOS
    with_word = len(model.tokenizer(f"{prefix} {word}".strip())["input_ids"]) - 1
    return before, with_word - before


@torch.no_grad()
def aligned_states(model, prompts: list[str], word: str, guide: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(erase, guide) text states, paired row by row (see the module docstring)."""
    erase_rows, guide_rows = [], []
    for text in prompts:
        guide_text = replace_word(text, word, guide)
        states = model.encode_text(model.tokenize([text, guide_text])).float()
        length = states.shape[1]
        start, n_concept = _span(model, text, word)
        n_guide = _span(model, guide_text, guide)[1] if guide else 0
        for j in range(start, length):
            if j < start + n_concept:
                g = start + min(j - start, n_guide - 1) if n_guide else start - 1
            else:
                g = j - n_concept + n_guide
            if g >= length:
                break
            erase_rows.append(states[0, j])
            guide_rows.append(states[1, g])
    return torch.stack(erase_rows), torch.stack(guide_rows)


@torch.no_grad()
def preserved_states(model, prompts: list[str], word: str, preserve: tuple[str, ...]) -> Optional[torch.Tensor]:
    """Every token state of `prompts` with `word` replaced by each preserved concept (None if none)."""
    texts = [replace_word(text, word, p) for p in preserve for text in prompts]
    if not texts:
        return None
    return model.encode_text(model.tokenize(texts)).float().flatten(0, 1)


class UCE(Method):
    name = "uce"
    supports = ("t2i",)
    knobs = {"lam": Range(0, low_open=True), "erase_scale": NON_NEGATIVE, "preserve_scale": NON_NEGATIVE}

    def __init__(self, lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float = 1.0):
        self.lam, self.erase_scale, self.preserve_scale = float(lam), float(erase_scale), float(preserve_scale)

    def check_model(self, model_config: dict) -> None:
        require_cross_attention(model_config, self.name)

    def request_states(self, ctx: UnlearnContext) -> tuple[nn.Module, dict[str, nn.Linear], torch.Tensor,
                                                            torch.Tensor, torch.Tensor | None]:
        """(a copy of the original, its attn2 k/v projections by name, erase, guide and preserve text states)
        for the task's concept request; ConfigError if the model has no cross-attention."""
        task, request = ctx.task, ctx.task.request
        model = copy.deepcopy(ctx.original).eval()
        projections = model.cross_attention_projections()
        if not projections:
            raise ConfigError(f"method={self.name} edits cross-attention key/value projections (attn2.to_k/to_v), "
                              f"and this model has none")
        prompts = [task.prompts[i] for i in task.concept_prompt_ids.tolist()]
        erase, guide = aligned_states(model, prompts, request.concept, request.guide)
        preserve = preserved_states(model, prompts, request.concept, request.preserve)
        return model, projections, erase, guide, preserve

    def edit(self, projections: dict[str, nn.Linear], erase: torch.Tensor, guide: torch.Tensor,
             preserve: torch.Tensor | None) -> None:
        """UCE's closed form applied in place to every projection."""
        with torch.no_grad():
            for projection in projections.values():
                projection.weight.copy_(uce_edit(projection.weight, erase, guide, preserve, self.lam,
                                                 self.erase_scale, self.preserve_scale))

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        model, projections, erase, guide, preserve = self.request_states(ctx)
        self.edit(projections, erase, guide, preserve)
        return model
