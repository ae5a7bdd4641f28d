"""The one optimisation loop: training the original and the oracles, and every gradient-based method.

A step sees a forget batch and/or a retain batch (a `Streams` plan says how they are drawn) and an
objective turns them into a scalar. Hooks let a method act after backward (mask gradients) and after
the optimiser step (restore frozen weights).
"""
from __future__ import annotations

import copy
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


class Probe(Protocol):
    """Looks at the model during a loop (the unlearning trajectory, unlearn/pipeline/trajectory.py): called before
    the first step (step 0) and then every `every` optimiser steps (`unit` "step") or epochs (`unit` "epoch"), with
    the number of optimiser steps and of epochs (a float: a fraction where the unit is steps) done so far. It
    returns True to end the loop there: the learning-rate schedule stays that of the full run, so the model it
    leaves is the full run's checkpoint at that point."""

    every: int
    unit: str

    def __call__(self, model: nn.Module, step: int, epoch: float) -> bool: ...


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
             data_parallel: bool = False, probe: Probe | None = None) -> History:
    """Run `config.epochs` epochs of `objective` over `streams`, or exactly `max_steps` steps when given (as many
    epochs as they need, the last one cut short: a relearning attack counts steps, not epochs).

    `data_parallel` under `accelerate launch` (runtime.world_size > 1): every process takes its shard of the
    data (`rank_streams`) and the gradients are averaged across processes before each step, so all keep the
    same weights (DDP's rule, on any model and objective; the effective batch is world_size × batch_size).

    `probe` (optional) looks at the model during the loop and may end it early (`Probe`).

    Raises DivergedError when an epoch's loss or, after the epoch's last step, any trained weight is not
    finite (the loss is computed before each step, so only the weights show what the last step did)."""
    trained = [p for p in model.parameters() if p.requires_grad]
    parallel = data_parallel and runtime.world_size > 1
    if parallel:
        streams, generator = rank_streams(streams, generator, runtime)
    step = _Single(model, objective, streams, config.batch_size, generator, augment)
    return _run(step, trained, config, runtime, hooks, desc, on_epoch, max_steps, streams.steps_per_epoch(config.batch_size),
                parallel, probe)[0]


def optimise_stacked(stack: "StackedModels", objective: Objective, streams: Streams, config: OptimConfig,
                     runtime: Runtime, generators: list[torch.Generator], *,
                     augment: Callable[[Batch, torch.Generator], Batch] | None = None, desc: str = "train",
                     on_epoch: Callable[[str, int, float], None] | None = None) -> list[History]:
    """`optimise` for N models at once: the same loop, one step updating every member (torch.func `vmap` over
    the stacked weights). Member i draws its batches and augmentation from `generators[i]` exactly as
    `optimise` would with that generator alone, its loss and gradient involve only its own weights, and the
    optimisers of the table are element-wise, so member i's result is the one it gets trained alone (up to
    float rounding of the batched kernels) and does not depend on N. `streams` must not be "union" (its
    members' batches would differ in size). Returns one History per member; DivergedError names the member."""
    if streams.mode == "union" or len(generators) != stack.n:
        raise ValueError(f"optimise_stacked needs a forget or retain stream and one generator per member; got "
                         f"stream={streams.mode!r}, {len(generators)} generators for {stack.n} models")
    step = _Stacked(stack, objective, streams, config.batch_size, generators, augment)
    return _run(step, [p for p in stack.parameters() if p.requires_grad], config, runtime, None, desc, on_epoch, None,
                streams.steps_per_epoch(config.batch_size), False)


class _Single:
    """One model: the step's batches and loss."""

    def __init__(self, model, objective, streams, batch_size, generator, augment):
        self.module, self.objective, self.streams = model, objective, streams
        self.batch_size, self.generator, self.augment, self.cycles = batch_size, generator, augment, {}
        self.n = 1

    def batches(self):
        for forget, retain in self.streams.epoch(self.batch_size, self.generator, self.cycles):
            yield _augmented(forget, retain, self.augment, self.generator)

    def loss(self, forget, retain) -> torch.Tensor:
        """(1,) so that single and stacked runs share the loop's bookkeeping."""
        return self.objective(self.module, forget, retain).reshape(1)


class _Stacked:
    """N models: each member's batches from its own generator, stacked on a new first dimension."""

    def __init__(self, stack, objective, streams, batch_size, generators, augment):
        self.module, self.objective, self.streams = stack, objective, streams
        self.batch_size, self.generators, self.augment = batch_size, generators, augment
        self.cycles = [{} for _ in generators]
        self.n = stack.n

    def batches(self):
        epochs = [self.streams.epoch(self.batch_size, g, c) for g, c in zip(self.generators, self.cycles)]
        for pairs in zip(*epochs):
            pairs = [_augmented(f, r, self.augment, g) for (f, r), g in zip(pairs, self.generators)]
            yield tuple(None if members[0] is None else {k: torch.stack([b[k] for b in members]) for k in members[0]}
                        for members in zip(*pairs))

    def loss(self, forget, retain) -> torch.Tensor:
        return self.module.vmap(self.objective, forget, retain)


def _augmented(forget, retain, augment, generator):
    if augment is None:
        return forget, retain
    return (augment(forget, generator) if forget is not None else None,
            augment(retain, generator) if retain is not None else None)


def _run(step, trained: list[torch.Tensor], config: OptimConfig, runtime: Runtime, hooks: StepHooks | None, desc: str,
         on_epoch, max_steps: int | None, steps_per_epoch: int, parallel: bool,
         probe: Probe | None = None) -> list[History]:
    """The loop itself, for one model (`_Single`) or a stack (`_Stacked`): per-member losses of shape (n,).
    `parallel`: average gradients (and the epoch's divergence figures) across accelerate's processes.
    `probe`: see `Probe` (single models only)."""
    optimizer = config.make_optimizer(trained)
    epochs = config.epochs if max_steps is None else math.ceil(max_steps / steps_per_epoch)
    total = max(epochs * steps_per_epoch if max_steps is None else max_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: config.lr_factor(i, total))
    histories = [History() for _ in range(step.n)]
    model = step.module
    model.train()
    done = 0  # optimiser steps taken

    def look(unit: str, count: int) -> bool:
        """Whether the probe ends the loop here (False when there is none, or it is not due)."""
        if probe is None or probe.unit != unit or count % probe.every:
            return False
        stop = probe(model, done, done / steps_per_epoch)
        model.train()  # the probe evaluates in eval mode
        return stop

    stopped = probe is not None and look(probe.unit, 0)  # step 0: the model the method starts from
    bar = tqdm(range(0 if stopped else epochs), desc=desc, leave=False, disable=None)
    for epoch in bar:
        running = torch.zeros(step.n, device=runtime.device)
        n_steps = 0
        for forget_batch, retain_batch in step.batches():
            with runtime.autocast():
                losses = step.loss(forget_batch, retain_batch)
            optimizer.zero_grad(set_to_none=True)
            # Members' losses depend on their own weights only, so the sum's gradient is each member's own.
            losses.sum().backward()
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
            running += losses.detach().float()
            n_steps += 1
            done += 1
            if max_steps is not None and epoch * steps_per_epoch + n_steps >= max_steps:
                break
            if look("step", done):
                stopped = True
                break
        # One host sync per epoch: the divergence checks and the logged losses share it.
        lead = (step.n,) if step.n > 1 else ()
        finite = (torch.stack([torch.isfinite(p).flatten(len(lead)).all(-1) for p in trained]).all(0).reshape(step.n)
                  if trained else running.new_ones(step.n))
        stats = torch.stack([running / max(n_steps, 1), finite.to(running.dtype)])
        if parallel:  # every process takes the same decision (a lone raise would leave the others waiting)
            runtime.average([stats])
        mean_losses, weights_ok = stats.tolist()
        member = lambda i: f"{desc} (member {i} of {step.n})" if step.n > 1 else desc  # noqa: E731
        for i, (mean_loss, ok) in enumerate(zip(mean_losses, weights_ok)):
            if not math.isfinite(mean_loss):
                raise DivergedError(f"{member(i)}: loss became {mean_loss} in epoch {epoch + 1}/{epochs}")
            if ok < 1:  # the share of processes whose weights are finite
                raise DivergedError(f"{member(i)}: weights became non-finite in epoch {epoch + 1}/{epochs}")
            histories[i].epoch_losses.append(mean_loss)
        mean_loss = sum(mean_losses) / step.n
        bar.set_postfix(loss=f"{mean_loss:.4f}")
        if on_epoch is not None:
            on_epoch(desc, epoch, mean_loss)
        if stopped or look("epoch", epoch + 1):
            break
    return histories


class StackedModels(nn.Module):
    """N models of one architecture as one: every weight and buffer stacked on a new first dimension
    (torch.func.stack_module_state), applied member by member with `vmap` + `functional_call`, so a step of N
    small models is one batched computation (convolutions become grouped ones) instead of N small ones.
    Batch-norm running statistics are stacked buffers, updated per member."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        params, buffers = torch.func.stack_module_state(models)
        self.n = len(models)
        self._names = list(params)
        self._buffer_names = list(buffers)
        # The architecture without storage: functional_call supplies each member's tensors.
        self._base = [copy.deepcopy(models[0]).to("meta")]
        # Frozen weights (requires_grad False) stay frozen, as in each model's own loop.
        self.weights = nn.ParameterList([nn.Parameter(params[name].detach().clone(), requires_grad=params[name].requires_grad)
                                         for name in self._names])
        for i, name in enumerate(self._buffer_names):
            self.register_buffer(f"buffer_{i}", buffers[name].clone())

    def _tensors(self) -> tuple[dict, dict]:
        return (dict(zip(self._names, self.weights)),
                {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self._buffer_names)})

    def train(self, mode: bool = True) -> "StackedModels":
        self._base[0].train(mode)
        return super().train(mode)

    def vmap(self, objective: Objective, forget: Optional[Batch], retain: Optional[Batch]) -> torch.Tensor:
        """(N,) losses: `objective(member, forget_i, retain_i)` for every member i, the member a callable
        model (x -> outputs) over its own weights."""
        base = self._base[0]

        def member_loss(params, buffers, f, r):
            return objective(lambda *args: torch.func.functional_call(base, (params, buffers), args), f, r)

        params, buffers = self._tensors()
        in_dims = (0, 0, None if forget is None else 0, None if retain is None else 0)
        return torch.func.vmap(member_loss, in_dims=in_dims)(params, buffers, forget, retain)

    def load_into(self, models: list[nn.Module]) -> list[nn.Module]:
        """Write member i's weights and buffers into `models[i]` (same architecture) and return them."""
        params, buffers = self._tensors()
        with torch.no_grad():
            for i, model in enumerate(models):
                model.load_state_dict({name: t[i] for name, t in (params | buffers).items()}, strict=False)
        return models


def stackable(model: nn.Module) -> str | None:
    """Why `model` cannot be trained stacked (None when it can): randomness inside the forward pass (dropout)
    would be drawn for the stack as a whole, not per member as in its own loop; pruning masks and other
    parametrisations are per-model state stack_module_state does not carry."""
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return "it has dropout"
    if any(hasattr(m, "parametrizations") for m in model.modules()) or any(
            m._forward_pre_hooks or m._forward_hooks for m in model.modules()):
        return "it carries masks or forward hooks"
    return None
