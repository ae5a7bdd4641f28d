"""RECE — Reliable and Efficient Concept Erasure [Gong et al., ECCV 2024]: a UCE edit, then epochs that find,
in closed form, the text embedding that still regenerates the concept through the edited projections, and
UCE-edit that embedding toward the guide too. Edits accumulate (each epoch starts from the current weights).

Adversarial embedding (one for all edited projections, "a single space"): for the concept's text state c,
    c′ = argmin_x Σ_l ‖W′_l x − W_l c‖² + λ_reg‖x‖² = (Σ_l W′_lᵀ W′_l + λ_reg I)⁻¹ (Σ_l W′_lᵀ W_l) c,
the sum over every cross-attention key/value matrix l (W′ the current, W the original weights): the input
whose keys and values under the edited model are closest to what the concept produced before erasure.
Each epoch maps c′ (one per concept state that UCE edits, see `unlearn.methods.uce`) onto the guide's state's
output under the current weights, with the preserved states held (UCE's closed form, W_old = current weights).
The states erased in earlier rounds (the concept's own, the earlier c′) stay in the erase set with their guide
states: c′ has a large norm (the edited weights squash the concept's direction), and an edit of c′ alone moves
W c back toward the concept — on the tiny world one such round undid the whole UCE edit.

The number of epochs is a config knob (`epochs`), not chosen on the evaluation prompts (the reference selects
it on the evaluation metric itself). The text encoder is not touched.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from unlearn.errors import ShapeError
from unlearn.knobs import NON_NEGATIVE_INT, Range
from unlearn.methods.base import UnlearnContext
from unlearn.methods.uce import UCE


def adversarial_embedding(edited: Sequence[torch.Tensor], original: Sequence[torch.Tensor], states: torch.Tensor,
                          reg: float) -> torch.Tensor:
    """RECE's closed-form adversarial embeddings (module docstring) of each row of `states`.

    edited, original: the same number of matrices, pairwise of one shape (d_out_l, d_in); states (n, d_in).
    Returns (n, d_in) in the states' dtype. Solved in float64. Raises ShapeError on mismatched shapes,
    ValueError for reg <= 0 or no matrices."""
    if not edited or len(edited) != len(original):
        raise ValueError(f"need as many edited as original matrices (at least one); got {len(edited)} and {len(original)}")
    if not reg > 0:
        raise ValueError(f"reg must be > 0 (it keeps the system invertible), got {reg}")
    if states.dim() != 2:
        raise ShapeError(f"states must have shape (n, d_in), got {tuple(states.shape)}")
    d_in = states.shape[1]
    gram = reg * torch.eye(d_in, dtype=torch.float64, device=states.device)
    cross = torch.zeros_like(gram)
    for new, old in zip(edited, original):
        if new.shape != old.shape or new.dim() != 2 or new.shape[1] != d_in:
            raise ShapeError(f"each edited/original pair must have one shape (d_out, {d_in}); got "
                             f"{tuple(new.shape)} and {tuple(old.shape)}")
        new, old = new.detach().to(gram), old.detach().to(gram)
        gram = gram + new.T @ new
        cross = cross + new.T @ old
    # c′ᵀ rows: solve gram · c′ = cross · c for every state at once (gram symmetric positive definite).
    return torch.linalg.solve(gram, cross @ states.detach().to(gram).T).T.to(states.dtype)


class RECE(UCE):
    name = "rece"
    supports = ("t2i",)
    knobs = {"reg": Range(0, low_open=True), "epochs": NON_NEGATIVE_INT}  # with UCE's lam / erase / preserve scales

    def __init__(self, lam: float = 0.1, erase_scale: float = 1.0, preserve_scale: float = 0.1, reg: float = 1e-3,
                 epochs: int = 1):
        super().__init__(lam=lam, erase_scale=erase_scale, preserve_scale=preserve_scale)
        self.reg, self.epochs = float(reg), int(epochs)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        model, projections, erase, guide, preserve = self.request_states(ctx)
        original = [p.weight.detach().clone() for p in projections.values()]
        erased, guides = erase, guide
        self.edit(projections, erased, guides, preserve)
        for _ in range(self.epochs):
            found = adversarial_embedding([p.weight for p in projections.values()], original, erase, self.reg)
            # Every state erased so far stays in the erase set, so the new edit cannot undo the earlier ones.
            erased, guides = torch.cat([erased, found]), torch.cat([guides, guide])
            self.edit(projections, erased, guides, preserve)
        return model
