"""SimNPO (Fan et al. 2024): reference-free, length-normalised NPO, plus retain NLL.

L = forget_weight·(−(2/β)·mean log σ(β·L̄_θ − γ)) + λ·retain NLL, with L̄_θ the forget answer's mean token NLL
(the "sequence_mean" reduction). The margin is written as the authors' code writes it, β·(L̄_θ − δ), i.e.
γ = β·δ (the same at the default δ = 0). Defaults from TOFU forget10: β 4.5, forget weight 0.125, δ 0, λ 1.
LLM only.
"""
from __future__ import annotations

from unlearn.knobs import NON_NEGATIVE, POSITIVE, Range
from unlearn.methods.base import GradientMethod
from unlearn.methods.preference import preference_loss, sequence_logprob


class SimNPO(GradientMethod):
    name = "simnpo"
    supports = ("llm",)
    knobs = {"beta": POSITIVE, "delta": Range(), "forget_weight": POSITIVE, "alpha": NON_NEGATIVE}

    def __init__(self, beta: float = 4.5, delta: float = 0.0, forget_weight: float = 0.125, alpha: float = 1.0,
                 **optim):
        super().__init__(**optim)
        self.beta, self.delta = float(beta), float(delta)
        self.forget_weight, self.alpha = float(forget_weight), float(alpha)
        self.uses_retain = self.alpha > 0

    def objective(self, ctx, model, forget, retain):
        mean_nll = -sequence_logprob(model, forget, "sequence_mean")
        loss = self.forget_weight * preference_loss(mean_nll - self.delta, self.beta)
        if retain is not None:
            loss = loss + self.alpha * ctx.task.loss(model, retain).mean()
        return loss
