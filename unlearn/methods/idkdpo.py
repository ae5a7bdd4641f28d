"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one, plus retain NLL.

ρ = log π_θ(y|x) − log π_ref(y|x) per answer (sequence sums, π_ref a frozen copy of θo);
L = −(2/β)·mean log σ(β·(ρ_refusal − ρ_forget)) + α·retain NLL; β 0.1. The refusal is drawn per example from
the task's refusal lines (`Task.relabel`). LLM only.
"""
from __future__ import annotations

from unlearn.knobs import NON_NEGATIVE, POSITIVE
from unlearn.methods.base import GradientMethod
from unlearn.methods.preference import frozen_copy, preference_loss, reference_logprob, sequence_logprob


class IdkDPO(GradientMethod):
    name = "idkdpo"
    supports = ("llm",)
    knobs = {"beta": POSITIVE, "alpha": NON_NEGATIVE}

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, **optim):
        super().__init__(**optim)
        self.beta, self.alpha = float(beta), float(alpha)
        self.uses_retain = self.alpha > 0

    def prepare(self, ctx, model):
        self._reference = frozen_copy(ctx.original)

    def objective(self, ctx, model, forget, retain):
        refusal = ctx.task.relabel(forget, ctx.generator)
        win = sequence_logprob(model, refusal) - reference_logprob(self._reference, refusal)
        lose = sequence_logprob(model, forget) - reference_logprob(self._reference, forget)
        loss = preference_loss(win - lose, self.beta)
        if retain is not None:
            loss = loss + self.alpha * ctx.task.loss(model, retain).mean()
        return loss
