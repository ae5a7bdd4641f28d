"""What every unlearning method sees (`UnlearnContext`) and the two method shapes:
`Method` (anything) and `GradientMethod` (an objective optimised over forget/retain streams)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from unlearn.data.tensordata import Batch, TensorData
from unlearn.errors import ConfigError, UnsupportedTaskError
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, OneOf, Range
from unlearn.methods.masks import MASKS, FrozenOutsideMask, weight_mask
from unlearn.models.lora import LoraSettings, prepare_for_training
from unlearn.runtime import Clock, Runtime, Stopwatch
from unlearn.tasks.base import Task
from unlearn.protocol import PROTOCOL_KEYS
from unlearn.training import (OPTIMIZERS, SCHEDULES, STREAM_MODES, OptimConfig, Probe, StackedModels, Streams,
                              optimise, optimise_stacked, stackable)

if TYPE_CHECKING:
    from unlearn.attribution import Attribution

ALL_TASKS = ("classification", "llm", "diffusion", "t2i")


@dataclass
class UnlearnContext:
    task: Task
    original: nn.Module                     # θo: methods copy it, never modify it
    forget: TensorData
    retain: TensorData
    runtime: Runtime
    generator: torch.Generator              # the method stage's own seeded stream
    oracle: Callable[[], nn.Module]         # the cached retrained model (Retrain returns it)
    oracle_seconds: float                   # how long the oracle took to train (wall clock)
    on_epoch: Optional[Callable[[str, int, float], None]] = None
    forget_indices: Optional[np.ndarray] = None              # F as indices into the training set
    # Cached artifacts a method may ask for; the time spent building them is not part of its RTE.
    attribution: Optional[Callable[[], "Attribution"]] = None  # TRAK scores of the training set (DMM)
    oracles: Optional[Callable[[int], list[nn.Module]]] = None  # n more retrains on D \ F, seeds of their own
    # artifact(kind, fields, compute): compute() cached under (kind, fields, θo, F); its build time is kept out
    # of RTE by the pipeline. None: compute() is simply called.
    artifact: Optional[Callable[[str, dict, Callable[[], Any]], Any]] = None
    oracle_cpu_seconds: float = float("nan")  # the CPU time it took
    # Looks at the model during the method's loop (the trajectory, method.eval_every; unlearn.training.Probe).
    probe: Optional[Probe] = None

    def cached(self, kind: str, fields: dict, compute: Callable[[], Any]) -> Any:
        return compute() if self.artifact is None else self.artifact(kind, fields, compute)


@dataclass
class OriginalTrainer:
    """What an exact method (SISA, S3T) gets to train and cache the models its original is made of.

    `key_fields` (data, model, recipe, seed, precision) go into every cache key it makes, so its stages are
    shared exactly like the pipeline's original and oracles."""

    task: Task
    runtime: Runtime
    cache: Any                              # unlearn.cache.Cache
    recipe: OptimConfig                     # data.train
    train: TensorData                       # the whole training set; indices refer to it
    val: TensorData                         # held-out data outside D (S3T pretrains its frozen backbone on it)
    model_seed: int
    key_fields: dict[str, Any]
    new_model: Callable[[str], nn.Module]   # a freshly initialised cfg.model, seeded by a stage name
    on_epoch: Optional[Callable[[str, int, float], None]] = None


class Method:
    """An unlearning method: θo → θu. Subclasses set `supports` to the task kinds they apply to."""

    name: str = "method"
    supports: Sequence[str] = ALL_TASKS
    uses_oracle: bool = False  # built from the oracle(s) (ctx.oracle / ctx.oracles), so needs them trained
    relabels: bool = False     # trains on task.relabel(forget batch), which some tasks cannot make
    #: its loop passes `ctx.probe` on, so method.eval_every can record its trajectory (GradientMethod's loop does)
    traced: bool = False
    #: keys of its config node the pipeline reads (the protocol: unlearn/protocol.py), not the constructor
    pipeline_keys = PROTOCOL_KEYS
    knobs = {"eval_every": Range(1, integer=True, optional=True), "eval_size": COUNT}

    def check(self, task: Task) -> None:
        if task.kind not in self.supports:
            raise UnsupportedTaskError(f"method {self.name!r} does not apply to {task.kind} tasks; "
                                       f"it supports: {', '.join(self.supports)}")
        if self.relabels and not task.can_relabel:
            raise UnsupportedTaskError(f"method {self.name!r} trains on relabelled forget examples, which this data "
                                       f"set cannot make: {task.relabel_note}")

    def check_weights(self, probe: Callable[[], Optional[nn.Module]]) -> None:
        """Raise ConfigError if a name this method takes (parameters, modules) names nothing in the model; called
        before anything trains. `probe()` builds the run's model without weights (meta device: the same module and
        parameter names), or None where the model cannot be probed; call it only when there is a name to check.
        Nothing by default."""

    def check_model(self, model_config: dict) -> None:
        """Raise ConfigError if this method cannot run on the model `model_config` builds (called before
        anything trains). Nothing by default."""

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        raise NotImplementedError

    def reported_seconds(self, measured: Clock, ctx: UnlearnContext) -> Clock:
        """Run time reported as RTE: the measured wall clock and CPU time of `unlearn`."""
        return measured

    def why_not_stacked(self) -> str | None:
        """Why this method cannot unlearn a population of originals as one stacked computation
        (`unlearn_stacked`); None when it can."""
        return f"method {self.name} has no stacked form"

    def unlearn_stacked(self, ctxs: Sequence[UnlearnContext]) -> list[nn.Module]:
        """`unlearn` of each context, as one computation; member i's model is the one `unlearn(ctxs[i])` gives
        (up to float rounding). Only called when `why_not_stacked()` is None."""
        raise NotImplementedError

    def build_original(self, trainer: OriginalTrainer) -> Optional[tuple[nn.Module, str]]:
        """Exact methods own their original (e.g. SISA's shard ensemble): return it and its cache key,
        training through `trainer`. None (the default): the pipeline trains the plain original."""
        return None

    def run_metrics(self) -> dict[str, float]:
        """Figures about the last `unlearn` call the row records beside the task's metrics (e.g. how many
        shards an exact method retrained). None by default."""
        return {}

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "name"}


class GradientMethod(Method):
    """θo copied, then `objective` optimised for `epochs` over forget/retain batches drawn by `stream`.

    Subclasses say which sets they read (`uses_forget`, `uses_retain`) and may prepare state before the
    loop (`prepare`) and act on gradients or weights around each step (`after_backward`, `after_step`).

    Every gradient method composes with a weight mask (`mask` = none | saliency | wagle, unlearn/methods/masks.py):
    only the top `mask_ratio` of all weights by the mask's score are updated, the others stay at θo under
    momentum and weight decay. The mask is computed once on θo, cached per (θo, F, mask settings), and its
    computing time is part of RTE whether or not it came from the cache. A mask other than the class's
    `default_mask` is shown in the method's name (`npo+wagle`).
    """

    uses_forget: bool = True
    uses_retain: bool = True
    traced = True  # subclasses with a loop of their own (or that reshape the model around it) set False
    default_mask: str = "none"
    #: whether `model.lora.r` applies (False for methods that pick the trained weights or run their own loop)
    trains_lora: bool = True
    #: the objective reads only ctx.task and the batches (not ctx.generator, θo or state of its own), so a
    #: population of originals can be unlearned stacked (`unlearn_stacked`)
    stackable_objective: bool = False
    knobs = {"lr": POSITIVE, "epochs": NON_NEGATIVE_INT, "batch_size": COUNT, "optimizer": OneOf(OPTIMIZERS),
             "momentum": FRACTION, "weight_decay": NON_NEGATIVE, "schedule": OneOf(SCHEDULES),
             "stream": OneOf(STREAM_MODES), "mask": OneOf(MASKS), "mask_ratio": Range(0, 1, low_open=True),
             "mask_mu": POSITIVE}

    def __init__(self, lr: float, epochs: int, batch_size: int = 64, optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 5e-4, schedule: str = "constant", stream: str = "forget",
                 mask: str | None = None, mask_ratio: float = 0.5, mask_mu: float = 1e-6):
        mask = self.default_mask if mask is None else mask  # the ranges of these are declared in `knobs` above
        self.mask, self.mask_ratio, self.mask_mu = mask, float(mask_ratio), float(mask_mu)
        if mask != self.default_mask:
            self.name = f"{type(self).name}+{mask}"
        self._frozen: FrozenOutsideMask | None = None
        self._mask_seconds = Clock(0.0, 0.0)
        self.lr, self.epochs, self.batch_size = float(lr), int(epochs), int(batch_size)
        self.optimizer, self.momentum, self.weight_decay = optimizer, float(momentum), float(weight_decay)
        self.schedule, self.stream = schedule, stream
        self._optim = OptimConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, optimizer=optimizer,
                                  momentum=self.momentum, weight_decay=self.weight_decay, schedule=schedule)
        self._lora, self._checkpointing = LoraSettings(), False

    def check_model(self, model_config: dict) -> None:
        """Take the model's LoRA rank (`model.lora.r`) and gradient-checkpointing switch for the unlearning copy.
        A method that trains its own choice of weights (`trains_lora = False`) or a weight mask refuses LoRA."""
        self._lora = LoraSettings.from_config(model_config.get("lora"))
        self._checkpointing = bool(model_config.get("gradient_checkpointing", False))
        if self._lora.enabled and not self.trains_lora:
            raise ConfigError(f"method {self.name!r} chooses which weights it trains, so it cannot train LoRA "
                              f"adapters; drop model.lora.r")
        if self._lora.enabled and self.mask != "none":
            raise ConfigError(f"method.mask={self.mask} selects weights of the full model, LoRA trains adapters "
                              f"instead: use one of them (method.mask=none or drop model.lora.r)")

    def check_weights(self, probe: Callable[[], Optional[nn.Module]]) -> None:
        """LoRA's target modules must each name a module of the model (peft itself only fails after training,
        and only when none matches)."""
        if self._lora.enabled:
            model = probe()
            if model is not None:
                self._lora.check_targets(model)

    def objective(self, ctx: UnlearnContext, model: nn.Module, forget: Optional[Batch], retain: Optional[Batch]) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, ctx: UnlearnContext, model: nn.Module) -> None:
        """Called once on the copy of θo before optimisation."""

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        model = prepare_for_training(copy.deepcopy(ctx.original), self._lora, self._checkpointing)
        self._frozen = None
        if self.mask != "none":
            fields = {"mask": self.mask, "ratio": self.mask_ratio, "mu": self.mask_mu if self.mask == "wagle" else None}
            payload = ctx.cached("weight-mask", fields, lambda: timed_mask(self.mask, model, ctx, self.mask_ratio,
                                                                           self.mask_mu))
            self._mask_seconds = Clock.of(payload)
            self._frozen = FrozenOutsideMask(model, {n: m.to(ctx.runtime.device) for n, m in payload["mask"].items()})
        self.prepare(ctx, model)
        optimise(model, lambda m, f, r: self.objective(ctx, m, f, r), self._streams(ctx), self._optim, ctx.runtime,
                 ctx.generator, augment=ctx.task.augment, hooks=_MaskedHooks(self, self._frozen),
                 desc=f"unlearn[{self.name}]", on_epoch=ctx.on_epoch, data_parallel=True, probe=ctx.probe)
        return model

    def _streams(self, ctx: UnlearnContext) -> Streams:
        return Streams(forget=ctx.forget if self.uses_forget else None,
                       retain=ctx.retain if self.uses_retain else None, mode=self.stream)

    def steps(self, forget: TensorData, retain: TensorData) -> int:
        """The optimiser steps `unlearn` takes on these forget and retain sets (method.eval_every's bound)."""
        streams = Streams(forget=forget if self.uses_forget else None, retain=retain if self.uses_retain else None,
                          mode=self.stream)
        return streams.steps_per_epoch(self.batch_size) * self.epochs

    def why_not_stacked(self) -> str | None:
        own = type(self)
        if not self.stackable_objective:
            return f"method {self.name}'s objective is not declared stackable (stackable_objective)"
        if self.mask != "none":
            return f"method {self.name} uses a weight mask"
        if self._lora.enabled or self._checkpointing:
            return "model.lora.r / gradient checkpointing wrap each model on its own"
        if self.stream == "union":
            return "stream=union gives members batches of different sizes"
        if any(getattr(own, hook) is not getattr(GradientMethod, hook) for hook in ("prepare", "after_backward", "after_step")):
            return f"method {self.name} has per-model preparation or step hooks"
        return None

    def unlearn_stacked(self, ctxs: Sequence[UnlearnContext]) -> list[nn.Module]:
        models = [copy.deepcopy(ctx.original) for ctx in ctxs]
        reason = stackable(models[0])
        if reason is not None:
            raise ValueError(f"unlearn_stacked: the model cannot be stacked ({reason})")
        stack = StackedModels(models)
        ctx = ctxs[0]  # the objective reads only ctx.task (stackable_objective), the same in every context
        optimise_stacked(stack, lambda m, f, r: self.objective(ctx, m, f, r), self._streams(ctx), self._optim,
                         ctx.runtime, [c.generator for c in ctxs], augment=ctx.task.augment,
                         desc=f"unlearn[{self.name}] x{len(ctxs)} (stacked)", on_epoch=ctx.on_epoch)
        return stack.load_into(models)

    def reported_seconds(self, measured: Clock, ctx: UnlearnContext) -> Clock:
        """The loop's time plus the time the weight mask took to compute (cached or not)."""
        return measured + self._mask_seconds if self.mask != "none" else measured


class _MaskedHooks:
    """The method's own step hooks, then the mask's (so masked-out weights end every step at θo)."""

    def __init__(self, method: GradientMethod, frozen: FrozenOutsideMask | None):
        self.method, self.frozen = method, frozen

    def after_backward(self, model: nn.Module) -> None:
        self.method.after_backward(model)
        if self.frozen is not None:
            self.frozen.after_backward()

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.method.after_step(model, optimizer)
        if self.frozen is not None:
            self.frozen.after_step(optimizer)


def timed_mask(kind: str, model: nn.Module, ctx: UnlearnContext, ratio: float, mu: float) -> dict[str, Any]:
    """{"mask": the weight mask of `kind` on `model` (θo), on CPU; "seconds", "cpu_seconds": the time it took}."""
    with Stopwatch() as clock:
        mask = weight_mask(kind, model, ctx.task, ctx.forget, ctx.retain, ctx.runtime, ratio, mu)
    return {"mask": {n: m.cpu() for n, m in mask.items()}, **clock.payload()}


def concat_batches(*batches: Optional[Batch]) -> Batch:
    """One batch from several (None entries skipped), so the model sees a single forward pass of a fixed
    size, as one loader over the union would give it."""
    present = [b for b in batches if b is not None]
    return {key: torch.cat([b[key] for b in present]) for key in present[0]}
