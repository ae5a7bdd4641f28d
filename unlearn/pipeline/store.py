"""The trained-model store: every original and oracle the pipeline hands out, with its identity.

A model's identity is its cache key: the content key of a trained original or oracle (data, model, task, recipe,
seed, precision and the training code), or a published checkpoint's file hashes. Everything computed from a model
is keyed by that identity (DESIGN.md, "Lineage"). Originals are trained here, in a second process beside the
oracle (`beside.py`), or stacked with other population members (`populations.py`); published ones are loaded.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import torch
from omegaconf import DictConfig
from torch import nn

from unlearn.cache import Cache, content_key
from unlearn.codehash import code_digest
from unlearn.config import build, plain, target_of
from unlearn.errors import ConfigError
from unlearn.methods.base import Method, OriginalTrainer
from unlearn.models import checkpoints
from unlearn.models.pruning import Pruner, apply_masks, masks_of, sparsity
from unlearn.runtime import Runtime, Stopwatch, derive_seed
from unlearn.tasks.base import Task
from unlearn.training import OptimConfig

if TYPE_CHECKING:
    from unlearn.data.forget import ForgetSet
    from unlearn.pipeline.beside import Beside
    from unlearn.pipeline.populations import Stack
    from unlearn.pipeline.request import Request

log = logging.getLogger("unlearn")
EpochCallback = Callable[[str, int, float], None]
Payload = dict[str, Any]


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def find_published(cfg: DictConfig) -> dict[str, checkpoints.Checkpoint]:
    """The published original and oracle a config names (`original.path`, `oracle.path`), found and hashed
    (ConfigError naming the path where one is neither on disk nor fetchable)."""
    return {role: checkpoints.resolve(role, str(cfg[role].path), cfg[role].get("revision"))
            for role in checkpoints.ROLES if cfg.get(role) is not None and cfg[role].get("path")}


def seed_stage(model_seed: int, *stage: str) -> None:
    """Seed torch's global RNG per stage, so a stage draws the same numbers whether or not the stages before it
    ran or came from the cache."""
    torch.manual_seed(derive_seed(model_seed, "stage", *stage))


class ModelStore:
    """Originals and oracles by model seed, from the cache, trained, or published (`original.path`,
    `oracle.path`). `request` gives the forget set an oracle is retrained without; `stack` and `beside` are the
    population's stacked training and the second process, which hand their payloads back here."""

    def __init__(self, cfg: DictConfig, task: Task, method: Method, runtime: Runtime, cache: Cache,
                 recipe: OptimConfig, pruner: Pruner | None, request: "Request",
                 published: dict[str, checkpoints.Checkpoint] | None = None):
        self.cfg, self.task, self.method, self.runtime, self.cache = cfg, task, method, runtime, cache
        self.recipe, self.pruner, self.request = recipe, pruner, request
        self.seed = int(cfg.seed)
        self.model_config = plain(cfg.model)
        # Published originals / oracles (original.path, oracle.path): found and hashed now (or by the caller, as
        # `published`), loaded when first used.
        self.checkpoints = published if published is not None else find_published(cfg)
        self._published: dict[str, tuple[nn.Module, str]] = {}
        self._training_code: str | None = None
        self._flop: tuple[float, float] | None = None
        self.stack: "Stack" = None  # set by the Experiment that composes the stages
        self.beside: "Beside" = None

    # ---- building -------------------------------------------------------------------------------
    def new_model(self, model_seed: int, stage: str) -> nn.Module:
        torch.manual_seed(derive_seed(model_seed, "init", stage))
        return self.runtime.place(build(self.cfg.model))

    def probe_model(self) -> nn.Module | None:
        """The run's model without weights (meta device: its module and parameter names), for the checks made
        before anything trains; the factory's own `probe` where it has one (a pretrained model built from its
        config). None where the model cannot be built so (its constructor computes with its weights)."""
        factory = target_of(self.cfg.model)
        with torch.random.fork_rng(devices=[]):  # building must not move the stages' seeded RNG
            if hasattr(factory, "probe"):
                return factory.probe(self.model_config)
            try:
                with torch.device("meta"):
                    return build(self.cfg.model)
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - not probe-able; the method checks its names when it starts
                return None

    def model_from_state(self, payload: Payload) -> nn.Module:
        model = self.new_model(self.seed, "load")
        if payload.get("masks"):
            apply_masks(model, payload["masks"])
        model.load_state_dict(payload["state_dict"])
        return model

    def train(self, model_seed: int, train_set, stage: str, on_epoch: EpochCallback | None,
              masks: dict | None = None, checkpoint_epoch: int | None = None) -> Payload:
        """Train a fresh model (with fixed pruning masks, if given); optionally keep an early checkpoint."""
        model = self.new_model(model_seed, stage)
        if masks:
            apply_masks(model, masks)
        checkpoint: dict[str, Any] = {}

        def after_epoch(name: str, epoch: int, loss: float) -> None:
            if checkpoint_epoch is not None and epoch + 1 == checkpoint_epoch:
                checkpoint.update(state_dict(model))
            if on_epoch is not None:
                on_epoch(name, epoch, loss)

        seed_stage(model_seed, stage)
        with Stopwatch() as clock:
            self.task.fit(model, train_set, self.recipe, self.runtime, self.runtime.generator(model_seed, stage),
                          desc=stage, on_epoch=after_epoch)
        return {"state_dict": state_dict(model), "masks": masks, "checkpoint": checkpoint or None,
                "model_config": self.model_config, **clock.payload("train_")}

    def training_flop(self) -> tuple[float, float]:
        """(FLOP of one training step, of the whole recipe) of this config's original: a forward of one batch
        counted by torch's FLOP counter (on the meta device where the loss allows it), a step taken as three
        forwards. An estimate from the config alone (`threads=auto`, `parallel_training=auto` use it)."""
        if self._flop is None:
            from torch.utils.flop_counter import FlopCounterMode

            train = self.request.data()[0].train
            batch = next(iter(train.batches(self.recipe.batch_size)))
            size = len(next(iter(batch.values())))
            counter = FlopCounterMode(display=False)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                try:  # free where the loss never reads a value (.item()) back
                    probe = self.probe_model()
                    if probe is None:
                        raise RuntimeError("no meta model")
                    with counter:
                        self.task.loss(probe, {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()})
                except Exception:  # noqa: BLE001 - count on the real model instead
                    counter = FlopCounterMode(display=False)
                    with counter:
                        self.task.loss(self.new_model(self.seed, "probe"), batch)
            step = 3 * counter.get_total_flops()
            self._flop = step, step / size * len(train) * self.recipe.epochs
        return self._flop

    # ---- keys -----------------------------------------------------------------------------------
    def common_key_fields(self, model_seed: int) -> dict[str, Any]:
        """What a trained model depends on: data, model, task (loss and augmentation knobs), recipe, seed,
        precision, the CPU threads that train it (they change its rounding), and the code of the loss, the model,
        the training loop and the seeding."""
        if self._training_code is None:
            self._training_code = code_digest(self.task.fit, self.task.loss, self.task.augment, target_of(self.cfg.model),
                                              ModelStore.train, Runtime, self.task.fit_stacked)
        # LoRA (model.lora) shapes only the unlearning copy: the original and the oracle train every weight.
        model = {k: v for k, v in self.model_config.items() if k != "lora"}
        return dict(data=self.request.data()[1], model=model, task=plain(self.cfg.data.task),
                    recipe=vars(self.recipe), seed=model_seed, precision=self.runtime.precision,
                    threads=self.runtime.key_threads, code=self._training_code)

    def trained_key_fields(self, model_seed: int) -> dict[str, Any]:
        """The pipeline's own originals and oracles: the common fields, and whether the model is a stacked member.
        A stacked member equals the member trained alone up to float rounding after a few steps, but a full recipe
        amplifies the rounding into a visibly different model of the same seed (docs/populations.md, "Populations trained
        stacked"), so stacked members have keys of their own, shared by every stacked run whatever its N."""
        return self.common_key_fields(model_seed) | ({"stacked": True} if self.stack.member(model_seed) else {})

    def dense_original_key(self, model_seed: int, checkpoint_epoch: int | None = None) -> str:
        return content_key("original", **self.trained_key_fields(model_seed),
                           **({"checkpoint_epoch": checkpoint_epoch} if checkpoint_epoch else {}))

    def oracle_key(self, model_seed: int, masks: dict | None, forget: "ForgetSet | None" = None) -> str:
        """The identity of the retrain without `forget` (default: the request's forget set): its indices only, so a
        validation request's oracle shares nothing with the reported request."""
        forget = forget or self.request.forget
        return content_key("oracle", **self.trained_key_fields(model_seed), forget=forget.indices, masks=masks)

    # ---- originals and oracles ------------------------------------------------------------------
    def original(self, model_seed: int, on_epoch: EpochCallback | None) -> tuple[Payload, str, bool]:
        """The trained original's (payload, identity, cached): dense, or pruned from the dense one (`prune`)."""
        data, _ = self.request.data()
        rewind = self.pruner.rewind_epoch if self.pruner else None
        dense_key = self.dense_original_key(model_seed, rewind)

        def train() -> Payload:
            return self.train(model_seed, data.train, "original", on_epoch, checkpoint_epoch=rewind)

        dense, cached = self.cache.get_or_compute(
            dense_key, lambda: self.beside.payload(dense_key, on_epoch, train) if self.beside.running(dense_key)
            else self.stack.payload("original", model_seed, dense_key) if self.stack.member(model_seed)
            else train(), "original")
        if self.pruner is None:
            return dense, dense_key, cached
        sparse_key = content_key("sparse-original", code=code_digest(type(self.pruner), ModelStore.prune),
                                 dense=dense_key, pruner=self.pruner.cache_fields())
        sparse, cached = self.cache.get_or_compute(
            sparse_key, lambda: self.prune(model_seed, dense, on_epoch), f"sparse original ({self.pruner.rate:.0%})")
        return sparse, sparse_key, cached

    def prune(self, model_seed: int, dense: Payload, on_epoch) -> Payload:
        data, _ = self.request.data()
        rewind_state = dense["checkpoint"] if self.pruner.rewind_epoch else state_dict(self.new_model(model_seed, "original"))
        generator = self.runtime.generator(model_seed, "sparse-original")

        def train(model: nn.Module) -> None:
            self.task.fit(model, data.train, self.recipe, self.runtime, generator, desc="sparse original", on_epoch=on_epoch)

        seed_stage(model_seed, "sparse-original")
        with Stopwatch() as clock:
            model = self.pruner.prune(self.model_from_state(dense), rewind_state, train)
        log.info("sparse original: %.1f%% of conv weights are zero", 100 * sparsity(model))
        return {"state_dict": state_dict(model), "masks": masks_of(model), "model_config": self.model_config,
                **clock.payload("train_")}

    def original_model(self, model_seed: int, on_epoch=None) -> tuple[nn.Module, str, Payload, bool]:
        """(θo, its identity, its payload, cached): published, the method's own where it builds one (exact
        methods, Method.build_original), else the pipeline's."""
        if self.published("original") is not None:
            model, key = self.published("original")
            return model, key, {}, True
        owned = self.method.build_original(self.original_trainer(model_seed, on_epoch))
        if owned is not None:
            return owned[0], owned[1], {}, False
        payload, key, cached = self.original(model_seed, on_epoch)
        return self.model_from_state(payload), key, payload, cached

    def original_trainer(self, model_seed: int, on_epoch=None) -> OriginalTrainer:
        data, _ = self.request.data()
        return OriginalTrainer(task=self.task, runtime=self.runtime, cache=self.cache, recipe=self.recipe,
                               train=data.train, val=data.val, model_seed=model_seed,
                               key_fields=self.common_key_fields(model_seed),
                               new_model=lambda stage: self.new_model(model_seed, stage), on_epoch=on_epoch)

    def oracle(self, model_seed: int, masks: dict | None, on_epoch=None,
               forget: "ForgetSet | None" = None) -> tuple[Payload, str, bool]:
        """The retrain on D \\ F for `model_seed`: (payload, identity, cached). With pruning it is the sparse
        retrain: the original's masks, trained from scratch on retain. `forget`: another request than the run's
        (a validation request, docs/tuning.md)."""
        data, _ = self.request.data()
        stacked = forget is None and self.stack.member(model_seed)  # a population trains the run's request's only
        forget = forget or self.request.forget
        key = self.oracle_key(model_seed, masks, forget)
        retain = data.train.subset(forget.retain_indices(len(data.train)))
        payload, cached = self.cache.get_or_compute(
            key, lambda: self.stack.payload("oracle", model_seed, key) if stacked
            else self.train(model_seed, retain, "oracle", on_epoch, masks=masks), "oracle (retrain)")
        return payload, key, cached

    def oracle_model(self, model_seed: int, masks: dict | None, on_epoch=None,
                     forget: "ForgetSet | None" = None) -> tuple[nn.Module, str, Payload, bool]:
        """(θr, its identity, its payload, cached): published, or the retrain (`oracle`) without `forget` (default:
        the run's forget set; a published oracle is the reported request's only)."""
        if self.published("oracle") is not None and forget is None:
            model, key = self.published("oracle")
            return model, key, {"train_seconds": float("nan"), "train_cpu_seconds": float("nan")}, True
        payload, key, cached = self.oracle(model_seed, masks, on_epoch, forget)
        return self.model_from_state(payload), key, payload, cached

    # ---- published checkpoints --------------------------------------------------------------------
    def published(self, role: str) -> tuple[nn.Module, str] | None:
        """(model, identity) of a published original or oracle (`<role>.path`), loaded once; None if not given.
        The identity is the checkpoint's (path or hub id + revision + file hashes)."""
        if role not in self.checkpoints:
            return None
        if role not in self._published:
            found = self.checkpoints[role]
            model = checkpoints.load(found, target_of(self.cfg.model), lambda: build(self.cfg.model), self.model_config)
            key = content_key(role, code=code_digest(checkpoints.load), checkpoint=found.identity)
            self._published[role] = self.runtime.place(model), key
        return self._published[role]

    def check_published(self) -> None:
        """A published oracle must have the original's architecture and tokenizer (ConfigError before training)."""
        if "oracle" not in self.checkpoints:
            return
        original = self.published("original")[0] if "original" in self.checkpoints else self.new_model(self.seed, "check")
        tokenizer = self.checkpoints["original"].local if "original" in self.checkpoints else self.cfg.data.get("tokenizer")
        checkpoints.check_pair(original, self.published("oracle")[0], tokenizer, self.checkpoints["oracle"].local)

    def builds_own_original(self) -> bool:
        return type(self.method).build_original is not Method.build_original
