"""IdkPO: plain NLL on the forget questions answered with a refusal (a wrong target, `Task.relabel`), plus
α·retain NLL, one forget batch and one retain batch per step. Where a task's wrong target is a random class
(classification) or another condition (diffusion), this is random labelling with paired batches."""
from __future__ import annotations

from unlearn.knobs import NON_NEGATIVE
from unlearn.methods.base import GradientMethod


class IdkPO(GradientMethod):
    name = "idkpo"
    relabels = True
    knobs = {"alpha": NON_NEGATIVE}

    def __init__(self, alpha: float = 1.0, **optim):
        super().__init__(**optim)
        self.alpha = float(alpha)
        self.uses_retain = self.alpha > 0

    def objective(self, ctx, model, forget, retain):
        loss = ctx.task.loss(model, ctx.task.relabel(forget, ctx.generator)).mean()
        if retain is not None:
            loss = loss + self.alpha * ctx.task.loss(model, retain).mean()
        return loss
