"""NPO (Zhang et al. 2024): negative preference optimisation on the forget answers, plus retain NLL.

With the sequence log-ratio r = log π_θ(y|x) − log π_ref(y|x) (sums over answer tokens, π_ref a frozen copy
of θo), L_NPO = −(2/β)·mean log σ(−β·r): DPO with the forget answer as the rejected one and no preferred
answer. It is GA's gradient weighted by 2σ(β·r), which vanishes once the forget answer is improbable
(self-limiting), and tends to GA's (on sequence-summed NLL) as β → 0. The usual row adds α·retain NLL
(per-sequence mean NLL, averaged over the batch). LLM only: it needs sequence log-probabilities.
"""
from __future__ import annotations

import torch

from unlearn.knobs import NON_NEGATIVE, POSITIVE
from unlearn.methods.base import GradientMethod
from unlearn.methods.preference import frozen_copy, preference_loss, reference_logprob, sequence_logprob


def npo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(−β·(logp − logp_ref)) for sequence log-probs (B,) of the model and the reference.
    Equals (2/β)·log 2 at logp = logp_ref. Scalar."""
    return preference_loss(logp_ref - logp, beta)


class NPO(GradientMethod):
    name = "npo"
    supports = ("llm",)
    knobs = {"beta": POSITIVE, "alpha": NON_NEGATIVE}

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, **optim):
        super().__init__(**optim)
        self.beta, self.alpha = float(beta), float(alpha)
        self.uses_retain = self.alpha > 0

    def prepare(self, ctx, model):
        self._reference = frozen_copy(ctx.original)

    def preference_term(self, ctx, model, forget):
        """The forget term; preference methods with another preferred answer override it (IdkDPO)."""
        return npo_loss(sequence_logprob(model, forget), reference_logprob(self._reference, forget), self.beta)

    def objective(self, ctx, model, forget, retain):
        loss = self.preference_term(ctx, model, forget)
        if retain is not None:
            loss = loss + self.alpha * ctx.task.loss(model, retain).mean()
        return loss
