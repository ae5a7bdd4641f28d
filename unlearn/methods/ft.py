"""FT (fine-tuning): continue training θo on the retain set only, relying on catastrophic forgetting."""
from unlearn.methods.base import GradientMethod


class FineTune(GradientMethod):
    name = "ft"
    stackable_objective = True
    uses_forget = False

    def objective(self, ctx, model, forget, retain):
        return ctx.task.loss(model, retain).mean()
