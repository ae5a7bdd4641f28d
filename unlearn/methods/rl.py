"""RL (random labels): train the forget set toward wrong targets while training the retain set normally.

Each step draws from one shuffled pass over forget ∪ retain (stream=union), as the SalUn reference's
concatenated loader does; forget examples get a fresh wrong target every time they are seen.
"""
from unlearn.methods.base import GradientMethod, concat_batches


class RandomLabel(GradientMethod):
    name = "rl"
    relabels = True

    def objective(self, ctx, model, forget, retain):
        relabelled = ctx.task.relabel(forget, ctx.generator) if forget is not None else None
        return ctx.task.loss(model, concat_batches(relabelled, retain)).mean()
