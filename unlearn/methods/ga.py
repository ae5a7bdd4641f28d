"""GA (gradient ascent): maximise the loss on the forget set (minimise −loss)."""
from unlearn.methods.base import GradientMethod


class GradientAscent(GradientMethod):
    name = "ga"
    stackable_objective = True
    uses_retain = False

    def objective(self, ctx, model, forget, retain):
        return -ctx.task.loss(model, forget).mean()
