"""GradDiff: ascend on the forget loss while descending on the retain loss: −ℓ(F) + α·ℓ(R)."""
from unlearn.methods.base import GradientMethod
from unlearn.knobs import NON_NEGATIVE


class GradDiff(GradientMethod):
    name = "graddiff"
    stackable_objective = True

    knobs = {"alpha": NON_NEGATIVE}

    def __init__(self, alpha: float = 1.0, **optim):
        super().__init__(**optim)
        self.alpha = float(alpha)

    def objective(self, ctx, model, forget, retain):
        return -ctx.task.loss(model, forget).mean() + self.alpha * ctx.task.loss(model, retain).mean()
