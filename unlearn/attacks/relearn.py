"""Relearning attack: fine-tune a copy of the model for a few steps on a small part of the forget set (or on as
much retain data) and measure how far the forget metrics return toward the original's (reference/llm.md,
"Relearning attack"). A model that truly lost what it learnt from F needs as many steps as the oracle to
relearn it; one whose unlearning only hid it snaps back.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from unlearn.attacks.base import Attack, AttackContext
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, OneOf, Range
from unlearn.training import OPTIMIZERS, OptimConfig, Streams, optimise

SOURCES = ("forget", "retain")


class Relearn(Attack):
    """`steps` optimiser steps of the task's own loss on `fraction` of the forget set (`data=forget`), or on as
    many retain examples drawn at random (`data=retain`: relearning from data the model may keep)."""

    name = "relearn"
    knobs = {"steps": COUNT, "fraction": Range(0, 1, low_open=True), "data": OneOf(SOURCES), "lr": POSITIVE,
             "batch_size": COUNT, "optimizer": OneOf(OPTIMIZERS), "momentum": FRACTION, "weight_decay": NON_NEGATIVE}

    def __init__(self, steps: int = 10, fraction: float = 0.5, data: str = "forget", lr: float = 1e-3,
                 batch_size: int = 16, optimizer: str = "adam", momentum: float = 0.9, weight_decay: float = 0.0):
        self.steps, self.fraction, self.data = int(steps), float(fraction), data
        self.lr, self.batch_size, self.optimizer = float(lr), int(batch_size), optimizer
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self._optim = OptimConfig(epochs=1, lr=self.lr, batch_size=self.batch_size, optimizer=optimizer,
                                  momentum=self.momentum, weight_decay=self.weight_decay, schedule="constant")

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        n = max(1, math.ceil(self.fraction * len(ctx.forget)))
        source = ctx.forget if self.data == "forget" else ctx.retain
        chosen = torch.randperm(len(source), generator=ctx.generator)[: min(n, len(source))]
        subset = source.subset(chosen.sort().values)
        attacked = copy.deepcopy(model)
        loss = ctx.task.loss
        optimise(attacked, lambda m, _forget, retain: loss(m, retain).mean(), Streams(retain=subset, mode="retain"),
                 self._optim, ctx.runtime, ctx.generator, augment=ctx.task.augment, desc=f"attack[{self.name}]",
                 max_steps=self.steps)
        return attacked
