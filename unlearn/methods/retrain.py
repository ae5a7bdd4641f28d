"""Retrain: the oracle itself, trained from scratch on the retain set with the original's recipe.

It reuses the cached oracle, and reports the oracle's training time as its RTE."""
from torch import nn

from unlearn.methods.base import Method, UnlearnContext
from unlearn.runtime import Clock


class Retrain(Method):
    name = "retrain"
    uses_oracle = True

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        return ctx.oracle()

    def reported_seconds(self, measured: Clock, ctx: UnlearnContext) -> Clock:
        return Clock(ctx.oracle_seconds, ctx.oracle_cpu_seconds)
