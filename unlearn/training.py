"""The one optimisation loop: training the original and the oracles, and every gradient-based method.

A step sees a forget batch and/or a retain batch (a `Streams` plan says how they are drawn) and an
objective turns them into a scalar. Hooks let a method act after backward (mask gradients) and after
the optimiser step (restore frozen weights).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch.optim imports it lazily on the first optimizer (~2 s); doing it here keeps that one-off import out of every RTE
from torch import nn
from tqdm.auto import tqdm

from unlearn.data.tensordata import Batch, TensorData
from unlearn.errors import ConfigError, DivergedError
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, OneOf
from unlearn.runtime import Runtime, derive_seed

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "cosine", "multistep")
STREAM_MODES = ("forget", "retain", "union")


@dataclass
class OptimConfig:
    """A training recipe (`data.train`, and the optimiser of every gradient method)."""

    knobs = {"epochs": NON_NEGATIVE_INT, "lr": NON_NEGATIVE, "batch_size": COUNT, "optimizer": OneOf(OPTIMIZERS),
             "momentum": FRACTION, "weight_decay": NON_NEGATIVE, "schedule": OneOf(SCHEDULES),
             "warmup_epochs": NON_NEGATIVE}

    epochs: int
    lr: float
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of training where lr drops 10x

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of {sorted(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr >= 0:
            raise ConfigError(f"need epochs >= 0, batch_size >= 1 and lr >= 0; got epochs={self.epochs}, "
                              f"batch_size={self.batch_size}, lr={self.lr}")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        kwargs = {"lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            kwargs["momentum"] = self.momentum
        return OPTIMIZERS[self.optimizer](params, **kwargs)

    def lr_factor(self, step: int, total_steps: int) -> float:
        warmup = int(self.warmup_epochs / max(self.epochs, 1) * total_steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "multistep":
            return 0.1 ** sum(progress >= m for m in self.milestones)
        return 1.0


@dataclass
class Streams:
    """How forget and retain batches are drawn each step.

    mode "forget": an epoch is one pass over forget; retain batches of the same size cycle alongside.
    mode "retain": the reverse. mode "union": one shuffled pass over forget ∪ retain, each step split
    into its forget part and its retain part, exactly as a loader over the concatenated sets.
    """

    forget: Optional[TensorData] = None
    retain: Optional[TensorData] = None
    mode: str = "retain"

    def __post_init__(self):
        if self.mode not in STREAM_MODES:
            raise ConfigError(f"stream={self.mode!r} is not one of {STREAM_MODES}")
        lead = self.forget if self.mode == "forget" else self.retain
        if self.mode != "union" and lead is None:
            raise ConfigError(f"stream={self.mode!r} needs a {self.mode} set")

    def steps_per_epoch(self, batch_size: int) -> int:
        if self.mode == "union":
            n = sum(len(d) for d in (self.forget, self.retain) if d is not None)
        else:
            n = len(self.forget if self.mode == "forget" else self.retain)
        return math.ceil(n / batch_size)

    @staticmethod
    def _cycle(data: TensorData, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        while True:
            yield from data.batches(batch_size, shuffle=True, generator=gen)

    def epoch(self, batch_size: int, gen: torch.Generator, cycles: dict) -> Iterator[tuple[Optional[Batch], Optional[Batch]]]:
        if self.mode == "union":
            n_forget = len(self.forget) if self.forget is not None else 0
            n_total = n_forget + (len(self.retain) if self.retain is not None else 0)
            order = torch.randperm(n_total, generator=gen)
            for start in range(0, n_total, batch_size):
                chunk = order[start : start + batch_size]
                f_idx, r_idx = chunk[chunk < n_forget], chunk[chunk >= n_forget] - n_forget
                yield (self.forget.batch(f_idx) if len(f_idx) else None,
                       self.retain.batch(r_idx) if len(r_idx) else None)
            return
        lead_name, other_name = ("forget", "retain") if self.mode == "forget" else ("retain", "forget")
        lead, other = getattr(self, lead_name), getattr(self, other_name)
        if other is not None and other_name not in cycles:
            cycles[other_name] = self._cycle(other, batch_size, gen)
        for batch in lead.batches(batch_size, shuffle=True, generator=gen):
            paired = next(cycles[other_name]) if other is not None else None
            yield (batch, paired) if lead_name == "forget" else (paired, batch)


    def shard(self, rank: int, world_size: int) -> "Streams":
        """This process's share of a data-parallel run: the leading set (both sets in union mode) split by
        interleaving, padded by wrapping around so every process takes the same number of steps."""
        def part(data: Optional[TensorData]) -> Optional[TensorData]:
            if data is None:
                return None
            n = len(data)
            return data.subset(np.arange(math.ceil(n / world_size) * world_size)[rank::world_size] % n)

        if self.mode == "union":
            return Streams(part(self.forget), part(self.retain), self.mode)
        lead = "forget" if self.mode == "forget" else "retain"
        return dataclasses.replace(self, **{lead: part(getattr(self, lead))})


def rank_streams(streams: Streams, generator: torch.Generator, runtime: Runtime) -> tuple[Streams, torch.Generator]:
    """The streams and generator of this process: its shard of the leading set, and its own generator, so that
    the other set's batches (e.g. retain beside forget) are drawn independently on every process."""
    if runtime.world_size == 1:
        return streams, generator
    own = torch.Generator().manual_seed(derive_seed(generator.initial_seed(), "rank", str(runtime.rank)))
    return streams.shard(runtime.rank, runtime.world_size), own


class StepHooks(Protocol):
    def after_backward(self, model: nn.Module) -> None: ...
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...


Objective = Callable[[nn.Module, Optional[Batch], Optional[Batch]], torch.Tensor]


@dataclass
class History:
    epoch_losses: list[float] = field(default_factory=list)


def optimise(model: nn.Module, objective: Objective, streams: Streams, config: OptimConfig, runtime: Runtime,
             generator: torch.Generator, *, augment: Callable[[Batch, torch.Generator], Batch] | None = None,
             hooks: StepHooks | None = None, desc: str = "train",
             on_epoch: Callable[[str, int, float], None] | None = None, max_steps: int | None = None,
             data_parallel: bool = False) -> History:
    """Run `config.epochs` epochs of `objective` over `streams`, or exactly `max_steps` steps when given (as many
    epochs as they need, the last one cut short: a relearning attack counts steps, not epochs).

    `data_parallel` under `accelerate launch` (runtime.world_size > 1): every process takes its shard of the
    data (`rank_streams`) and the gradients are averaged across processes before each step, so all keep the
    same weights (DDP's rule, on any model and objective; the effective batch is world_size × batch_size).

    Raises DivergedError when an epoch's loss or, after the epoch's last step, any trained weight is not
    finite (the loss is computed before each step, so only the weights show what the last step did)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    parallel = data_parallel and runtime.world_size > 1
    if parallel:
        streams, generator = rank_streams(streams, generator, runtime)
    optimizer = config.make_optimizer(trained)
    steps_per_epoch = streams.steps_per_epoch(config.batch_size)
    epochs = config.epochs if max_steps is None else math.ceil(max_steps / steps_per_epoch)
    total = max(epochs * steps_per_epoch if max_steps is None else max_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: config.lr_factor(step, total))
    history, cycles = History(), {}
    model.train()
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=None)
    for epoch in bar:
        running = torch.zeros((), device=runtime.device)
        n_steps = 0
        for forget_batch, retain_batch in streams.epoch(config.batch_size, generator, cycles):
            if augment is not None:
                forget_batch = augment(forget_batch, generator) if forget_batch is not None else None
                retain_batch = augment(retain_batch, generator) if retain_batch is not None else None
            with runtime.autocast():
                loss = objective(model, forget_batch, retain_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if parallel:
                for p in trained:
                    if p.grad is None:  # every process must reduce the same tensors
                        p.grad = torch.zeros_like(p)
                runtime.average([p.grad for p in trained])
            if hooks is not None:
                hooks.after_backward(model)
            optimizer.step()
            scheduler.step()
            if hooks is not None:
                hooks.after_step(model, optimizer)
            running += loss.detach().float()
            n_steps += 1
            if max_steps is not None and epoch * steps_per_epoch + n_steps >= max_steps:
                break
        # One host sync per epoch: the divergence checks and the logged loss share it.
        finite = torch.stack([torch.isfinite(p).all() for p in trained]).all() if trained else running.new_ones(())
        stats = torch.stack([running / max(n_steps, 1), finite.to(running.dtype)])
        if parallel:  # every process takes the same decision (a lone raise would leave the others waiting)
            runtime.average([stats])
        mean_loss, weights_ok = stats.tolist()
        if not math.isfinite(mean_loss):
            raise DivergedError(f"{desc}: loss became {mean_loss} in epoch {epoch + 1}/{epochs}")
        if weights_ok < 1:  # the share of processes whose weights are finite
            raise DivergedError(f"{desc}: weights became non-finite in epoch {epoch + 1}/{epochs}")
        history.epoch_losses.append(mean_loss)
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if on_epoch is not None:
            on_epoch(desc, epoch, mean_loss)
    return history
