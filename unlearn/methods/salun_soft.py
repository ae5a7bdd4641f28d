"""SalUn-soft: random labelling whose weight update is soft-thresholded after every step.

Where SalUn fixes a hard saliency mask up front, the soft variant (the SalUn reference's `RL_proximal`)
lets the update θ − θo choose its own support: after each optimiser step it applies the proximal
operator of an l1 penalty on θ − θo, θ ← θo + sign(d)·max(|d| − τ, 0), with τ the magnitude below which
the smallest `mask_ratio·(1 − e/E)` fraction of all entries falls (epoch e of E). Those entries return
exactly to θo and every other one shrinks by τ, so early epochs keep the update sparse and later ones
let it spread.
"""
from __future__ import annotations

import torch

from unlearn.errors import ConfigError
from unlearn.methods.fisher import assign_flat_, flatten, trainable
from unlearn.methods.l1_sparse import EpochClock
from unlearn.methods.rl import RandomLabel
from unlearn.knobs import FRACTION


def soft_threshold_update(start: torch.Tensor, current: torch.Tensor, fraction: float) -> torch.Tensor:
    """start + soft-thresholded (current − start), τ chosen so `fraction` of the entries become zero."""
    delta = current - start
    k = int(fraction * delta.numel())
    if k == 0:
        return current
    tau = delta.abs().kthvalue(k).values
    return start + delta.sign() * (delta.abs() - tau).clamp_min(0)


class SalUnSoft(RandomLabel):
    name = "salun_soft"

    knobs = {"mask_ratio": FRACTION}

    def __init__(self, mask_ratio: float = 0.5, **optim):
        super().__init__(**optim)
        if not 0 <= mask_ratio <= 1:
            raise ConfigError(f"salun_soft needs 0 <= mask_ratio <= 1, got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)
        self._start: torch.Tensor | None = None
        self._clock: EpochClock | None = None

    def zeroed_fraction(self, epoch: int) -> float:
        """Share of θ − θo that the threshold sets to zero in `epoch` (0-based)."""
        return self.mask_ratio * (1 - epoch / self.epochs)

    def prepare(self, ctx, model):
        self._start = flatten(trainable(model)).detach().clone()
        self._clock = EpochClock(self, ctx)

    @torch.no_grad()
    def after_step(self, model, optimizer):
        current = flatten(trainable(model))
        assign_flat_(model, soft_threshold_update(self._start, current, self.zeroed_fraction(self._clock.epoch)))
        self._clock.tick()
