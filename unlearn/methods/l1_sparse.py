"""l1-sparse: fine-tune on the retain set with an l1 penalty whose weight decays linearly per epoch,
ℓ(R) + γ_t·‖θ‖₁ with γ_t = α(1 − t/T) over the first T = epochs − no_l1_epochs epochs and 0 after
[Model Sparsity]. Pushing weights toward sparsity is what makes approximate unlearning close the gap.
"""
from __future__ import annotations

import torch

from unlearn.errors import ConfigError
from unlearn.methods.base import GradientMethod, UnlearnContext
from unlearn.training import Streams
from unlearn.knobs import NON_NEGATIVE, NON_NEGATIVE_INT


class EpochClock:
    """The epoch a GradientMethod's next step belongs to: its hooks see steps, and its objective neither."""

    def __init__(self, method: GradientMethod, ctx: UnlearnContext):
        streams = Streams(forget=ctx.forget if method.uses_forget else None,
                          retain=ctx.retain if method.uses_retain else None, mode=method.stream)
        self.steps_per_epoch = streams.steps_per_epoch(method.batch_size)
        self.steps = 0

    def tick(self) -> None:
        self.steps += 1

    @property
    def epoch(self) -> int:
        return self.steps // self.steps_per_epoch


class L1Sparse(GradientMethod):
    name = "l1_sparse"
    uses_forget = False

    knobs = {"alpha": NON_NEGATIVE, "no_l1_epochs": NON_NEGATIVE_INT}

    def __init__(self, alpha: float = 1e-4, no_l1_epochs: int = 0, **optim):
        super().__init__(**optim)
        self.alpha, self.no_l1_epochs = float(alpha), int(no_l1_epochs)
        if self.alpha < 0 or not 0 <= self.no_l1_epochs <= self.epochs:
            raise ConfigError(f"l1_sparse needs alpha >= 0 and 0 <= no_l1_epochs <= epochs ({self.epochs}); "
                              f"got alpha={self.alpha}, no_l1_epochs={self.no_l1_epochs}")
        self._clock: EpochClock | None = None

    def gamma(self, epoch: int) -> float:
        """The l1 weight in `epoch` (0-based): α at the start, falling linearly to 0 at epoch T."""
        decay_epochs = self.epochs - self.no_l1_epochs
        return self.alpha * max(0.0, 1.0 - epoch / decay_epochs) if decay_epochs > 0 else 0.0

    def prepare(self, ctx, model):
        self._clock = EpochClock(self, ctx)

    def objective(self, ctx, model, forget, retain):
        l1 = torch.stack([p.abs().sum() for p in model.parameters() if p.requires_grad]).sum()
        return ctx.task.loss(model, retain).mean() + self.gamma(self._clock.epoch) * l1

    def after_step(self, model, optimizer):
        self._clock.tick()
