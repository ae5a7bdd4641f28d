"""SCRUB: a student (θo's copy) is distilled from the teacher θo everywhere except the forget set.

Each epoch first runs, for the first `max_epochs` epochs only, a max-pass over the forget set that pushes
the student's outputs away from the teacher's (ascent on KL(teacher ‖ student) at temperature T), then
a min-pass over the retain set that pulls them back (ce_weight·CE + kl_weight·KL). Each pass is one
epoch of the shared training loop, so its optimiser state (momentum) starts afresh at every pass, where
the reference keeps one optimiser throughout. Classification only: it needs the logits.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.errors import ConfigError
from unlearn.methods.base import Method, UnlearnContext
from unlearn.training import OptimConfig, Streams, optimise
from unlearn.training import OPTIMIZERS
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, OneOf, POSITIVE


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened outputs, × T² so gradients keep their scale."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


class SCRUB(Method):
    name = "scrub"
    supports = ("classification",)

    knobs = {"lr": POSITIVE, "epochs": NON_NEGATIVE_INT, "max_epochs": NON_NEGATIVE_INT, "temperature": POSITIVE,
             "ce_weight": NON_NEGATIVE, "kl_weight": NON_NEGATIVE, "batch_size": COUNT, "forget_batch_size": COUNT,
             "optimizer": OneOf(OPTIMIZERS), "momentum": FRACTION, "weight_decay": NON_NEGATIVE}

    def __init__(self, lr: float, epochs: int, max_epochs: int, temperature: float = 4.0, ce_weight: float = 0.99,
                 kl_weight: float = 0.001, batch_size: int = 64, forget_batch_size: int = 16, optimizer: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 5e-4):
        if max_epochs > epochs:  # each knob's own range is declared in `knobs`
            raise ConfigError(f"scrub needs max_epochs <= epochs; got max_epochs={max_epochs}, epochs={epochs}")
        self.lr, self.epochs, self.max_epochs = float(lr), int(epochs), int(max_epochs)
        self.temperature, self.ce_weight, self.kl_weight = float(temperature), float(ce_weight), float(kl_weight)
        self.batch_size, self.forget_batch_size = int(batch_size), int(forget_batch_size)
        self.optimizer, self.momentum, self.weight_decay = optimizer, float(momentum), float(weight_decay)
        one_pass = lambda size: OptimConfig(epochs=1, lr=self.lr, batch_size=size, optimizer=optimizer,  # noqa: E731
                                            momentum=self.momentum, weight_decay=self.weight_decay)
        self._max_pass, self._min_pass = one_pass(self.forget_batch_size), one_pass(self.batch_size)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        teacher = copy.deepcopy(ctx.original).eval()
        student = copy.deepcopy(ctx.original)

        def divergence(logits, batch):
            with torch.no_grad():
                target = teacher(batch["x"])
            return distill_kl(logits, target, self.temperature)

        def max_pass(model, forget, _retain):
            return -divergence(model(forget["x"]), forget)

        def min_pass(model, _forget, retain):
            logits = model(retain["x"])  # one forward serves both terms
            return (self.ce_weight * F.cross_entropy(logits.float(), retain["y"])
                    + self.kl_weight * divergence(logits, retain))

        run = dict(runtime=ctx.runtime, generator=ctx.generator, augment=ctx.task.augment, on_epoch=ctx.on_epoch)
        for epoch in range(self.epochs):
            if epoch < self.max_epochs:
                optimise(student, max_pass, Streams(forget=ctx.forget, mode="forget"), self._max_pass,
                         desc=f"unlearn[scrub max {epoch + 1}]", **run)
            optimise(student, min_pass, Streams(retain=ctx.retain, mode="retain"), self._min_pass,
                     desc=f"unlearn[scrub min {epoch + 1}]", **run)
        return student
