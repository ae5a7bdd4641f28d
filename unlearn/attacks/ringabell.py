"""`attack=ringabell`: Ring-A-Bell's concept vector, continuous variant [Tsai et al., ICLR 2024].

v = mean over prompt pairs of E(p⁺) − E(p⁻), with p⁺ each of the concept's training prompts (every training
template and combination, canonical words) and p⁻ the same prompt with the concept replaced by each other
value of its axis; E is the text encoder of the attacked model (the states, position by position). Each target
prompt p is attacked with the states E(p) + η·v (the continuous variant: the embedding itself, no discrete
prompt search). Needs only the text encoder; no optimisation (cost ≈ two encoder passes).
"""
from __future__ import annotations

import torch

from unlearn.attacks.base import AttackContext
from unlearn.attacks.prompts import PromptAttack
from unlearn.data.concept import replace_word
from unlearn.knobs import Range


class RingABell(PromptAttack):
    name = "ringabell"
    knobs = {"eta": Range(0, low_open=True)}

    def __init__(self, eta: float = 1.0):
        self.eta = float(eta)

    @torch.no_grad()
    def adversarial_states(self, model, ctx: AttackContext, targets: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        task, request = ctx.task, ctx.task.request
        positives = [task.prompts[i] for i in task.concept_prompt_ids.tolist()]
        others = [v for v in task.axes[request.axis] if v != request.concept]
        negatives = [replace_word(text, request.concept, other) for other in others for text in positives]
        # Every positive pairs with one negative per other value, so the mean of differences is this.
        vector = model.encode_text(model.tokenize(positives)).float().mean(0) \
            - model.encode_text(model.tokenize(negatives)).float().mean(0)
        return model.encode_text(ids) + self.eta * vector.to(model.unet.device)
