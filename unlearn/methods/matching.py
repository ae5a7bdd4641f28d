"""Fine-tuning toward target outputs: the shared step of DMM and oracle matching [Attribute-to-Delete].

θo is fine-tuned so its logits match target logits (MSE) on the forget set plus `retain_per_forget`·|F|
retain points sampled once per run. Augmentation is off: each target belongs to one exact input.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.methods.base import GradientMethod, UnlearnContext, concat_batches
from unlearn.training import Streams, optimise
from unlearn.knobs import NON_NEGATIVE


class OutputMatching(GradientMethod):
    traced = False  # a loop of its own
    trains_lora = False  # picks its own trained weights / runs its own loop
    supports = ("classification",)

    knobs = {"retain_per_forget": NON_NEGATIVE}

    def __init__(self, retain_per_forget: float = 3.0, **optim):
        super().__init__(**optim)
        self.retain_per_forget = float(retain_per_forget)

    def targets(self, ctx: UnlearnContext, x: torch.Tensor) -> torch.Tensor:
        """The logits θu should produce on inputs `x`, shape (n, C)."""
        raise NotImplementedError

    @staticmethod
    def logits(ctx: UnlearnContext, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`model`'s logits on inputs `x`, as the task evaluates them (eval mode, batched, no augmentation)."""
        return torch.from_numpy(ctx.task.predict_logits(model, TensorData(x=x), ctx.runtime)).to(x.device)

    def matched_points(self, ctx: UnlearnContext) -> tuple[TensorData, TensorData]:
        """(forget, sampled retain), each with a `target` column of logits to match (targets computed once)."""
        n_retain = min(len(ctx.retain), int(round(self.retain_per_forget * len(ctx.forget))))
        chosen = torch.randperm(len(ctx.retain), generator=ctx.generator)[:n_retain].sort().values.numpy()
        retain = ctx.retain.subset(np.asarray(chosen, dtype=np.int64))
        targets = self.targets(ctx, torch.cat([ctx.forget["x"], retain["x"]])).to(ctx.forget["x"].device)
        n_forget = len(ctx.forget)
        return (TensorData(x=ctx.forget["x"], target=targets[:n_forget]),
                TensorData(x=retain["x"], target=targets[n_forget:]))

    def objective(self, ctx, model, forget, retain):
        batch = concat_batches(forget, retain)
        return (model(batch["x"]).float() - batch["target"]).pow(2).mean()

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        forget, retain = self.matched_points(ctx)
        model = copy.deepcopy(ctx.original)
        streams = Streams(forget=forget, retain=retain if len(retain) else None, mode=self.stream)
        optimise(model, lambda m, f, r: self.objective(ctx, m, f, r), streams, self._optim, ctx.runtime, ctx.generator,
                 hooks=self, desc=f"unlearn[{self.name}]", on_epoch=ctx.on_epoch)
        return model
