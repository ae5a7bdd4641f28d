"""FF (Fisher forgetting): add Gaussian noise whose variance is inversely proportional to the retain
set's Fisher information, so weights the retain set does not pin down are scrambled and those it needs
stay put: θu = θo + σ ⊙ ε, σ = min(√(alpha / (F + eps)), max_std), F the empirical diagonal Fisher
(mean squared per-example gradient) on `num_samples` retain examples (all when null).

The reference clamps σ at 1e-3 (and multiplies the noise of any tensor whose last dimension is 10 by 10,
a check meant for the CIFAR-10 head); here the clamp is a knob and every tensor is treated alike.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from unlearn.errors import ConfigError
from unlearn.methods.base import Method, UnlearnContext
from unlearn.methods.fisher import assign_flat_, diagonal_fisher, flatten, trainable
from unlearn.knobs import COUNT, NON_NEGATIVE, POSITIVE, Range


class FisherForgetting(Method):
    name = "ff"

    knobs = {"alpha": NON_NEGATIVE, "max_std": NON_NEGATIVE, "eps": POSITIVE,
             "num_samples": Range(1, integer=True, optional=True), "batch_size": COUNT}

    def __init__(self, alpha: float = 1e-8, max_std: float = 1e-3, eps: float = 1e-8,
                 num_samples: Optional[int] = None, batch_size: int = 128):
        if alpha < 0 or max_std < 0 or eps <= 0 or (num_samples is not None and num_samples < 1):
            raise ConfigError(f"ff needs alpha >= 0, max_std >= 0, eps > 0 and num_samples >= 1 (or null); got "
                              f"alpha={alpha}, max_std={max_std}, eps={eps}, num_samples={num_samples}")
        self.alpha, self.max_std, self.eps = float(alpha), float(max_std), float(eps)
        self.num_samples = None if num_samples is None else int(num_samples)
        self.batch_size = int(batch_size)

    def noise_std(self, fisher: torch.Tensor) -> torch.Tensor:
        return (self.alpha / (fisher + self.eps)).sqrt().clamp(max=self.max_std)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        model = copy.deepcopy(ctx.original)
        retain = ctx.retain
        if self.num_samples is not None:
            retain = retain.subset(torch.randperm(len(retain), generator=ctx.generator)[: self.num_samples])
        std = self.noise_std(diagonal_fisher(model, ctx.task, retain, self.batch_size))
        noise = torch.randn(std.shape, generator=ctx.generator).to(std.device)
        assign_flat_(model, flatten(trainable(model)).detach() + std * noise)
        return model
