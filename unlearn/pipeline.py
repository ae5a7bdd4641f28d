"""One run: data → original θo → forget set F → oracle θr → method θo→θu → evaluate → record.

Nothing here is modality-specific: the data config names its Task, and everything else goes through
the Task, Method and ForgetBuilder interfaces. Expensive stages are cached by content (cache.py).
With `eval.oracles=N > 1` the same forget set is also run against N originals and N oracles (each
cached under its own seed), and the N unlearned models are compared with the N oracles as populations.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from unlearn.attacks.base import Attack, AttackContext
from unlearn.attribution import Attribution, Trak
from unlearn.cache import Cache, content_key
from unlearn.codehash import code_digest
from unlearn.config import build, check_node, plain, target_of
from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle
from unlearn.errors import ConfigError, DivergedError
from unlearn.knobs import check_knobs
from unlearn.eval.population import population_metric_names, population_metrics
from unlearn.methods.base import Method, OriginalTrainer, UnlearnContext
from unlearn.models import checkpoints
from unlearn.models.lora import deployed
from unlearn.models.pruning import Pruner, apply_masks, masks_of, plain_state_dict, sparsity
from unlearn.report.loggers import Logger, record_row, write_json_atomic
from unlearn.report.row import environment, make_row, summary_table
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task
from unlearn.training import OptimConfig, stackable

log = logging.getLogger("unlearn")
EpochCallback = Callable[[str, int, float], None]
# Below this many training FLOPs (about 10-20 s of one core) the original's second process, which takes seconds to
# start, does not pay: on digits (9e10) it made the default run 19.5 s instead of 11.4 s.
BESIDE_MIN_FLOP = 5e11
# The second process of Experiment._original_beside_oracle: python -c CHILD <job dir>
CHILD = "import sys; from pathlib import Path; from unlearn.pipeline import _train_original; _train_original(Path(sys.argv[1]))"


@dataclass
class Artifacts:
    """One original/oracle pair for a forget set, from cache or freshly trained."""

    model_seed: int
    original: nn.Module
    original_key: str
    oracle: nn.Module
    oracle_key: str
    oracle_seconds: float
    timings: dict[str, Any]


class Experiment:
    """The stages of one run, from a composed config (`python run.py ...` or Hydra's compose API)."""

    def __init__(self, cfg: DictConfig, cache: Cache | None = None):
        self.cfg = cfg
        self.seed = int(cfg.seed)
        self.runtime = Runtime.from_config(cfg.device, cfg.precision, cfg.channels_last, cfg.get("threads"))
        self.cache = cache or Cache(cfg.cache_dir, enabled=bool(cfg.use_cache))
        # Everything that can be refused is checked and built first, so bad input fails before any training:
        # every knob of every node against its declared range (unlearn/knobs.py), then the objects themselves.
        check_node(cfg)
        self.task: Task = build(cfg.data.task)
        self.builder: ForgetBuilder = build(cfg.forget)
        self.method: Method = build(cfg.method)
        self.method.check(self.task)
        self.task.check_forget(self.builder)
        check_knobs(OptimConfig, plain(cfg.data.train), "data.train")
        self.recipe = OptimConfig(**plain(cfg.data.train))
        self.model_config = plain(cfg.model)
        self.method.check_model(self.model_config)
        self.pruner: Pruner | None = build(cfg.prune) if cfg.get("prune") is not None else None
        self.n_models = int(cfg.eval.oracles)
        if self.n_models < 1:
            raise ConfigError(f"eval.oracles must be >= 1 (1 = the run's own oracle only), got {self.n_models}")
        if cfg.eval.get("stacked", "auto") not in ("auto", True, False):
            raise ConfigError(f"eval.stacked={cfg.eval.stacked!r} must be auto, true or false")
        if self.n_models > 1 and not self.task.has_example_statistics:
            raise ConfigError(f"eval.oracles={self.n_models} needs a per-example statistic, which the "
                              f"{self.task.kind} task does not define; use eval.oracles=1")
        self.attributor: Trak = build(cfg.attribution)
        self.attack: Attack | None = build(cfg.attack) if cfg.get("attack") is not None else None
        if self.attack is not None:
            self.attack.check(self.task)
        self._data: tuple[DataBundle, str] | None = None
        self._forget: tuple[ForgetSet, str] | None = None
        self._attribution: Attribution | None = None
        # Wall time spent building cached artifacts on a method's request (kept out of its RTE), and what
        # those artifacts cost to make, cached or not (recorded in the row's timings as precompute_s).
        self._building_seconds = 0.0
        self._precompute_seconds: dict[str, float] = {}
        self._training_code: str | None = None
        # Published originals / oracles (original.path, oracle.path): found and hashed now, loaded when first used.
        self.checkpoints = {role: checkpoints.resolve(role, str(cfg[role].path), cfg[role].get("revision"))
                            for role in checkpoints.ROLES if cfg.get(role) is not None and cfg[role].get("path")}
        self._published: dict[str, tuple[nn.Module, str]] = {}
        if "original" in self.checkpoints and type(self.method).build_original is not Method.build_original:
            raise ConfigError(f"method {self.method.name!r} trains its own original (exact unlearning), so it cannot "
                              f"start from a published one; drop original.path")
        # Payloads of population members trained stacked (`train_members`), by cache key, until `_train`'s callers
        # take them (so a stacked member is cached under its own key, with or without a cache).
        self._stacked: dict[str, dict[str, Any]] = {}
        self._stack_refusal: str | None = None
        # The original being trained in a second process beside the oracle (`_original_beside_oracle`), by cache key.
        self._beside: dict[str, Any] = {}
        if self.cfg.get("parallel_training", "auto") not in ("auto", True, False):
            raise ConfigError(f"parallel_training={self.cfg.parallel_training!r} must be auto, true or false")
        if self.n_models > 1 and self.checkpoints:
            given = " and ".join(f"{role}.path" for role in self.checkpoints)
            raise ConfigError(f"eval.oracles={self.n_models} compares populations of models trained from different "
                              f"seeds, but {given} fixes every member to one published model, so KLoM, LiRA and the "
                              f"ε score would compare copies of one model; use eval.oracles=1, or drop {given} to "
                              f"train the population")
        # Names a config gives (a model's source, LoRA's target modules, a method's parameters) are resolved now.
        source_check = getattr(target_of(cfg.model), "check_source", None)
        if source_check is not None:
            source_check(self.model_config)
        self.method.check_weights(self.probe_model)

    # ---- models -------------------------------------------------------------------------------
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

    def model_from_state(self, payload: dict[str, Any]) -> nn.Module:
        model = self.new_model(self.seed, "load")
        if payload.get("masks"):
            apply_masks(model, payload["masks"])
        model.load_state_dict(payload["state_dict"])
        return model

    def seed_stage(self, model_seed: int, *stage: str) -> None:
        """Seed torch's global RNG per stage, so a stage draws the same numbers whether or not the stages
        before it ran or came from the cache."""
        torch.manual_seed(derive_seed(model_seed, "stage", *stage))

    def _train(self, model_seed: int, train_set, stage: str, on_epoch: EpochCallback | None,
               masks: dict | None = None, checkpoint_epoch: int | None = None) -> dict[str, Any]:
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

        self.seed_stage(model_seed, stage)
        start = time.perf_counter()
        self.task.fit(model, train_set, self.recipe, self.runtime, self.runtime.generator(model_seed, stage),
                      desc=stage, on_epoch=after_epoch)
        return {"state_dict": state_dict(model), "masks": masks, "checkpoint": checkpoint or None,
                "model_config": self.model_config, "train_seconds": time.perf_counter() - start}

    # ---- stages -------------------------------------------------------------------------------
    def data(self) -> tuple[DataBundle, str]:
        """The data set on the device and its content key (loaded once per experiment)."""
        if self._data is None:
            # A request that adds data (RESTOR's corrupting documents) extends train before anything is keyed or
            # trained; the key hashes the content, so the original's key covers the added documents.
            data = self.builder.extend(build(self.cfg.data.source), derive_seed(self.seed, "forget"))
            data_key = content_key("data", code=code_digest(target_of(self.cfg.data.source)), content=data.fingerprint())
            data = data.to(self.runtime.device)
            if self.runtime.channels_last:
                for split in (data.train, data.val, data.test):
                    for name, tensor in split.tensors.items():
                        if tensor.dim() == 4:
                            split.tensors[name] = tensor.contiguous(memory_format=torch.channels_last)
            self.builder.check(data)
            self.task.setup(data, self.cache, self.runtime, self.seed)
            self._data = data, data_key
        return self._data

    def _common_key_fields(self, model_seed: int) -> dict[str, Any]:
        """What a trained model depends on: data, model, task (loss and augmentation knobs), recipe, seed,
        precision, and the code of the loss, the model, the training loop and the seeding."""
        if self._training_code is None:
            self._training_code = code_digest(self.task.fit, self.task.loss, self.task.augment, target_of(self.cfg.model),
                                              self._train, Runtime, self.task.fit_stacked)
        # LoRA (model.lora) shapes only the unlearning copy: the original and the oracle train every weight.
        model = {k: v for k, v in self.model_config.items() if k != "lora"}
        return dict(data=self.data()[1], model=model, task=plain(self.cfg.data.task),
                    recipe=vars(self.recipe), seed=model_seed, precision=self.runtime.precision,
                    code=self._training_code)

    def _trained_key_fields(self, model_seed: int) -> dict[str, Any]:
        """The pipeline's own originals and oracles: the common fields, and whether the model is a stacked member.
        A stacked member equals the member trained alone up to float rounding after a few steps, but a full recipe
        amplifies the rounding into a visibly different model of the same seed (README "Populations trained
        stacked"), so stacked members have keys of their own, shared by every stacked run whatever its N."""
        return self._common_key_fields(model_seed) | ({"stacked": True} if self.stacked_member(model_seed) else {})

    def _original(self, model_seed: int, on_epoch) -> tuple[dict[str, Any], str, bool]:
        """The trained original's payload: dense, or pruned from the dense one when `prune` is set."""
        data, _ = self.data()
        rewind = self.pruner.rewind_epoch if self.pruner else None
        dense_fields = self._trained_key_fields(model_seed) | ({"checkpoint_epoch": rewind} if rewind else {})
        dense_key = content_key("original", **dense_fields)

        def train() -> dict[str, Any]:
            return self._train(model_seed, data.train, "original", on_epoch, checkpoint_epoch=rewind)

        dense, cached = self.cache.get_or_compute(
            dense_key, lambda: self._beside_payload(dense_key, on_epoch, train) if dense_key in self._beside
            else self._member_payload("original", model_seed, dense_key) if self.stacked_member(model_seed)
            else train(), "original")
        if self.pruner is None:
            return dense, dense_key, cached
        sparse_key = content_key("sparse-original", code=code_digest(type(self.pruner), self._prune), dense=dense_key,
                                 pruner=self.pruner.cache_fields())
        sparse, cached = self.cache.get_or_compute(
            sparse_key, lambda: self._prune(model_seed, dense, on_epoch), f"sparse original ({self.pruner.rate:.0%})")
        return sparse, sparse_key, cached

    def _prune(self, model_seed: int, dense: dict[str, Any], on_epoch) -> dict[str, Any]:
        data, _ = self.data()
        rewind_state = dense["checkpoint"] if self.pruner.rewind_epoch else state_dict(self.new_model(model_seed, "original"))
        generator = self.runtime.generator(model_seed, "sparse-original")

        def train(model: nn.Module) -> None:
            self.task.fit(model, data.train, self.recipe, self.runtime, generator, desc="sparse original", on_epoch=on_epoch)

        self.seed_stage(model_seed, "sparse-original")
        start = time.perf_counter()
        model = self.pruner.prune(self.model_from_state(dense), rewind_state, train)
        log.info("sparse original: %.1f%% of conv weights are zero", 100 * sparsity(model))
        return {"state_dict": state_dict(model), "masks": masks_of(model), "model_config": self.model_config,
                "train_seconds": time.perf_counter() - start}

    def forget_set(self, original: nn.Module, original_key: str) -> tuple[ForgetSet, str, bool]:
        """F for this run: chosen once, from the run's seed (and original, for builders that need it)."""
        if self._forget is not None:
            return (*self._forget, True)
        data, data_key = self.data()
        reference = Reference(self.task, original, original_key, self.runtime) if self.builder.needs_original else None
        key = content_key("forget", code=code_digest(type(self.builder), self.task.loss, self.task.fit),
                          data=data_key, builder=type(self.builder).__qualname__,
                          fields=self.builder.cache_fields(), seed=self.seed,
                          original=original_key if reference else None)
        self.seed_stage(self.seed, "forget")
        forget, cached = self.cache.get_or_compute(
            key, lambda: self.builder.build(data, derive_seed(self.seed, "forget"), reference), "forget set")
        self._forget = forget, key
        return forget, key, cached

    def prepare(self, on_epoch: EpochCallback | None = None, model_seed: int | None = None) -> Artifacts:
        """The original and oracle for `model_seed` (default: the run's seed) on the run's forget set. Where the
        forget set does not depend on the original and neither model is cached, the original trains in a second
        process while this one trains the oracle, on a CPU with threads to share (`parallel_training`)."""
        model_seed = self.seed if model_seed is None else model_seed
        timings: dict[str, Any] = {}
        t0 = time.perf_counter()
        data, _ = self.data()
        timings["data_s"] = time.perf_counter() - t0
        self.check_published()

        if not self.builder.needs_original:  # chosen first: it does not depend on the original
            self._timed_forget(None, None, timings)
        with self._original_beside_oracle(model_seed) as beside:
            if beside:
                oracle, oracle_key, payload = self._timed_oracle(model_seed, None, timings, on_epoch)
            t0 = time.perf_counter()
            original, original_key, original_payload, cached = self.original_model(model_seed, on_epoch)
            timings.update(original_s=time.perf_counter() - t0, original_cached=cached)
        if beside:
            timings.update(original_s=original_payload["train_seconds"], beside_oracle=True)
        else:
            if self.builder.needs_original:
                self._timed_forget(original, original_key, timings)
            oracle, oracle_key, payload = self._timed_oracle(model_seed, original_payload.get("masks"), timings, on_epoch)
        return Artifacts(model_seed, original, original_key, oracle, oracle_key, payload["train_seconds"], timings)

    def _timed_forget(self, original: nn.Module | None, original_key: str | None, timings: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        _, _, cached = self.forget_set(original, original_key)
        timings.update(forget_s=time.perf_counter() - t0, forget_cached=cached)

    def _timed_oracle(self, model_seed: int, masks: dict | None, timings: dict[str, Any], on_epoch) -> tuple:
        """(oracle, its key, its payload), its stage time added to `timings`."""
        t0 = time.perf_counter()
        if self.published("oracle") is not None:
            (oracle, oracle_key), payload, cached = self.published("oracle"), {"train_seconds": float("nan")}, True
        else:
            payload, oracle_key, cached = self._oracle(model_seed, masks, on_epoch)
            oracle = self.model_from_state(payload)
        timings.update(oracle_s=time.perf_counter() - t0, oracle_cached=cached)
        return oracle, oracle_key, payload

    def why_not_beside_oracle(self, model_seed: int) -> str | None:
        """Why `model_seed`'s original is not trained in a second process beside the oracle; None when it is."""
        threads = torch.get_num_threads()
        return ("parallel_training=false" if self.cfg.get("parallel_training", "auto") is False else
                "not on a CPU" if self.runtime.device.type != "cpu" else
                "a data-parallel launch" if self.runtime.world_size > 1 else
                f"{threads} thread" if threads < 2 else
                "a published original or oracle" if self.checkpoints else
                "the method builds its own original" if type(self.method).build_original is not Method.build_original else
                "the forget set depends on the original" if self.builder.needs_original else
                "pruning: the oracle takes the original's masks" if self.pruner is not None else
                "a stacked population member" if self.stacked_member(model_seed) else
                "the original or the oracle is cached" if self._original_or_oracle_cached(model_seed) else
                self._short_training(model_seed))

    def _original_or_oracle_cached(self, model_seed: int) -> bool:
        """Whether the dense original or the oracle of `model_seed` is cached (for a forget set that does not
        depend on the original, chosen here if it was not yet)."""
        self.forget_set(None, None)
        return self.cache.contains(content_key("original", **self._trained_key_fields(model_seed))) or \
            self.cache.contains(self._oracle_key(model_seed, None))

    def _short_training(self, model_seed: int) -> str | None:
        """With parallel_training=auto, why the original's training is too short to pay for a second process (its
        start-up costs seconds); None when it is long enough. Judged by an estimate of its FLOPs, not by timing, so
        the same config on any machine makes the same choice (and the same numbers: threads change rounding)."""
        if self.cfg.get("parallel_training", "auto") is True:
            return None
        from torch.utils.flop_counter import FlopCounterMode

        train = self.data()[0].train
        batch = next(iter(train.batches(8)))
        with torch.random.fork_rng(devices=[]), torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.task.loss(self.new_model(model_seed, "probe"), batch)
        # A training step costs about three forward passes.
        flop = 3 * counter.get_total_flops() / len(next(iter(batch.values()))) * len(train) * self.recipe.epochs
        if flop < BESIDE_MIN_FLOP:
            return f"a short training ({flop:.1e} FLOP < {BESIDE_MIN_FLOP:.0e}; parallel_training=true forces it)"
        return None

    @contextlib.contextmanager
    def _original_beside_oracle(self, model_seed: int) -> Iterator[bool]:
        """Start training `model_seed`'s original in a second Python process with half the threads, keep the other
        half here for the oracle, and yield True; yield False (nothing started) when `why_not_beside_oracle` gives a
        reason. Small models use a second thread poorly (t2i_tiny's step: 157 ms on one
        thread, 128 ms on two), so two models on one thread each finish sooner than one after another on two. Each
        model is trained by the same code, seeds and thread count as a `threads=1` run, so it is that run's model.
        The process is a fresh interpreter (`CHILD`), not a multiprocessing child, which would re-run the calling
        script's top level."""
        if self.why_not_beside_oracle(model_seed) is not None:
            yield False
            return
        key = content_key("original", **self._trained_key_fields(model_seed))
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory(prefix="unlearn-original-") as tmp:
            job = Path(tmp)
            torch.save({"config": OmegaConf.to_container(self.cfg, resolve=True), "cache_root": str(self.cache.root),
                        "cache_enabled": self.cache.enabled, "model_seed": model_seed, "threads": threads // 2},
                       job / "job.pt")
            package_root = str(Path(__file__).resolve().parents[1])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
            with open(job / "stderr.txt", "w") as stderr:
                process = subprocess.Popen([sys.executable, "-c", CHILD, str(job)], env=env,
                                           stdout=subprocess.DEVNULL, stderr=stderr)
            self._beside[key] = process, job
            log.info("the original trains in a second process (%d thread%s) while the oracle trains here (%d)",
                     threads // 2, "s" * (threads // 2 > 1), threads - threads // 2)
            torch.set_num_threads(threads - threads // 2)
            try:
                yield True
            finally:
                torch.set_num_threads(threads)
                self._beside.pop(key, None)
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def _beside_payload(self, key: str, on_epoch: EpochCallback | None,
                        train_here: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The original trained in the second process (waits for it); its epochs are reported now. If that process
        failed, the original trains here (`train_here`), which raises the error again if it is the training's own."""
        process, job = self._beside.pop(key)
        if process.wait() != 0 or not (job / "result.pt").exists():
            tail = (job / "stderr.txt").read_text(errors="replace").strip().splitlines()[-3:]
            log.warning("the original's second process failed (exit %s: %s); training it here", process.returncode,
                        " / ".join(tail) or "no output")
            return train_here()
        result = torch.load(job / "result.pt", map_location="cpu", weights_only=False)
        for stage, epoch, loss in result["epochs"] if on_epoch is not None else ():
            on_epoch(stage, epoch, loss)
        return result["payload"]

    def original_model(self, model_seed: int, on_epoch=None) -> tuple[nn.Module, str, dict[str, Any], bool]:
        """(θo, its key, its payload, cached): the method's own original where it builds one (exact methods,
        Method.build_original), else the pipeline's."""
        if self.published("original") is not None:
            model, key = self.published("original")
            return model, key, {}, True
        owned = self.method.build_original(self.original_trainer(model_seed, on_epoch))
        if owned is not None:
            return owned[0], owned[1], {}, False
        payload, key, cached = self._original(model_seed, on_epoch)
        return self.model_from_state(payload), key, payload, cached

    def published(self, role: str) -> tuple[nn.Module, str] | None:
        """(model, cache key) of a published original or oracle (`<role>.path`), loaded once; None if not given.
        The key is the checkpoint's identity (path or hub id + revision + file hashes)."""
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

    def original_trainer(self, model_seed: int, on_epoch=None) -> OriginalTrainer:
        data, _ = self.data()
        return OriginalTrainer(task=self.task, runtime=self.runtime, cache=self.cache, recipe=self.recipe,
                               train=data.train, val=data.val, model_seed=model_seed,
                               key_fields=self._common_key_fields(model_seed),
                               new_model=lambda stage: self.new_model(model_seed, stage), on_epoch=on_epoch)

    def set_forget(self, forget: ForgetSet, key: str) -> None:
        """Use this forget set from now on (a scenario's request instead of the forget builder's)."""
        self._forget = forget, key

    def _oracle(self, model_seed: int, masks: dict | None, on_epoch=None) -> tuple[dict[str, Any], str, bool]:
        """The retrain on D \\ F for `model_seed`. With pruning it is the sparse retrain: the original's masks,
        trained from scratch on retain."""
        data, _ = self.data()
        forget = self._forget[0]
        key = self._oracle_key(model_seed, masks)
        retain = data.train.subset(forget.retain_indices(len(data.train)))
        payload, cached = self.cache.get_or_compute(
            key, lambda: self._member_payload("oracle", model_seed, key) if self.stacked_member(model_seed)
            else self._train(model_seed, retain, "oracle", on_epoch, masks=masks), "oracle (retrain)")
        return payload, key, cached

    def _oracle_key(self, model_seed: int, masks: dict | None) -> str:
        return content_key("oracle", **self._trained_key_fields(model_seed), forget=self._forget[0].indices, masks=masks)

    # ---- populations trained stacked (DESIGN.md "Scale") -----------------------------------------
    def why_not_stacked(self) -> str | None:
        """Why this run's population members (originals, oracles) are trained one after another; None when they are
        trained stacked (`train_members`)."""
        if self._stack_refusal is None:
            with torch.random.fork_rng(devices=[]):  # the probe model must not move the stages' seeded RNG
                self._stack_refusal = self._stack_refusal_reason()
        return self._stack_refusal or None

    def _stack_refusal_reason(self) -> str:
        stacked = self.cfg.eval.get("stacked", "auto")
        # auto: stacked on a GPU only; on CPU it measured slower than one model after another
        # (results/throughput_cpu.md, results/population_scale.md).
        return ("eval.stacked=false" if stacked is False else
                "eval.stacked=auto trains stacked on a GPU only (slower on CPU)" if stacked == "auto" and
                self.runtime.device.type == "cpu" else
                "the task draws from torch's global RNG" if not self.task.stackable else
                "pruning gives each member masks of its own" if self.pruner is not None else
                stackable(self.new_model(self.seed, "probe")) or "")

    def stacked_member(self, model_seed: int) -> bool:
        """Whether `model_seed`'s original and oracle are trained stacked: every population, ensemble and matching
        member but the run's own seed (so a run's own row is the same for every eval.oracles), where the task, model
        and pruning allow it. A function of the config, never of what is cached, so runs stay reproducible."""
        return model_seed != self.seed and self.why_not_stacked() is None

    def _member_payload(self, stage: str, model_seed: int, key: str) -> dict[str, Any]:
        if key not in self._stacked:
            self.train_members(stage, [model_seed])
        return self._stacked.pop(key)

    def train_members(self, stage: str, seeds: list[int], on_epoch: EpochCallback | None = None) -> None:
        """Train the dense originals (stage "original") or oracles ("oracle") of `seeds` that are stacked members
        and not cached yet as one stacked computation; `_original` / `_oracle` then take them under each member's
        key. Member i gets the init, data order and augmentation of its own seed, as when trained alone."""
        if self.why_not_stacked() is not None:
            log.info("%d %ss trained one after another, not stacked: %s", len(seeds), stage, self.why_not_stacked())
            return
        if stage == "original" and type(self.method).build_original is not Method.build_original:
            return  # the method builds its own originals (exact methods)
        data, _ = self.data()
        seeds = [seed for seed in seeds if self.stacked_member(seed)]
        if stage == "original":
            keys = [content_key("original", **self._trained_key_fields(seed)) for seed in seeds]
            train_set = data.train
        else:
            keys = [self._oracle_key(seed, None) for seed in seeds]
            train_set = data.train.subset(self._forget[0].retain_indices(len(data.train)))
        todo = [(seed, key) for seed, key in zip(seeds, keys) if key not in self._stacked and not self.cache.contains(key)]
        if not todo:
            return
        log.info("%d %ss trained stacked", len(todo), stage)
        start = time.perf_counter()
        models = self.task.fit_stacked([self.new_model(seed, stage) for seed, _ in todo], train_set, self.recipe,
                                       self.runtime, [self.runtime.generator(seed, stage) for seed, _ in todo],
                                       desc=f"{stage} x{len(todo)} (stacked)", on_epoch=on_epoch)
        seconds = (time.perf_counter() - start) / len(todo)  # each member's share of the stack's wall time
        for (_, key), model in zip(todo, models):
            self._stacked[key] = {"state_dict": state_dict(model), "masks": None, "checkpoint": None,
                                  "model_config": self.model_config, "train_seconds": seconds, "stacked": len(todo)}

    def unlearn_members(self, arts: list[Artifacts], splits: Splits) -> list[nn.Module | None] | None:
        """The method on each of `arts`' originals as one stacked computation (None entries: a member's weights
        are not finite); None when the method or model cannot be stacked (logged), or the stack diverged as a
        whole, in which case the caller runs the members one by one."""
        if len(arts) < 2:
            return None
        reason = self.why_not_stacked() or self.method.why_not_stacked() or stackable(arts[0].original)
        if reason is not None:
            log.info("the method on %d originals runs one after another, not stacked: %s", len(arts), reason)
            return None
        ctxs = [self._context(art, splits, None) for art in arts]
        log.info("the method on %d originals runs stacked", len(arts))
        try:
            models = self.method.unlearn_stacked(ctxs)
        except DivergedError as exc:
            log.warning("stacked method %s diverged (%s); running its members one by one", self.method.name, exc)
            return None
        return [model if finite_model(model) else None for model in models]

    def member_seeds(self, n: int, namespace: str = "member") -> list[int]:
        """Model seeds of a population: the run's own seed first (for the default namespace), then derived ones.
        Population members and the attribution ensemble share them, so they share cached originals."""
        first = [self.seed] if namespace == "member" else []
        derived = [derive_seed(self.seed, namespace, str(i)) % 2**31 for i in range(len(first), n)]
        return first + derived

    def attribution(self) -> Attribution:
        """TRAK attribution from an ensemble of originals (the population's first `attribution.models`),
        cached by those originals, the data and the attribution settings; computed once per experiment."""
        if self._attribution is None:
            with self._building():
                data, data_key = self.data()
                self.train_members("original", self.member_seeds(self.attributor.models))
                originals = [self._original(seed, None) for seed in self.member_seeds(self.attributor.models)]
                models = [self.model_from_state(payload) for payload, _, _ in originals]
                key = content_key("attribution", code=code_digest(type(self.attributor)), data=data_key,
                                  originals=[k for _, k, _ in originals],
                                  attributor=self.attributor.cache_fields())
                payload, _ = self.cache.get_or_compute(key, lambda: self.attributor.fit(models, data.train),
                                                       "attribution (TRAK)")
                # The run's own original exists anyway; the other ensemble members are the attribution's cost.
                ensemble = sum(p.get("train_seconds", 0.0) for p, _, _ in originals[1:])
                self._precompute_seconds["attribution"] = payload["seconds"] + ensemble
                log.info("attribution: %d models, projection dim %d; %.1f s to score + %.1f s to train the extra models",
                         len(models), self.attributor.proj_dim, payload["seconds"], ensemble)
                self._attribution = self.attributor.attribution(models, payload, self.runtime)
        return self._attribution

    def matching_oracles(self, n: int, masks: dict | None) -> list[nn.Module]:
        """n retrains on D \\ F with seeds of their own, disjoint from the evaluation population's, so a method
        that matches them is not scored against the very models it copied."""
        with self._building():
            self.train_members("oracle", self.member_seeds(n, "matching"))
            payloads = [self._oracle(seed, masks)[0] for seed in self.member_seeds(n, "matching")]
        # The run's own matching oracles; population members (with pruning, their own masks) add evaluation cost.
        self._precompute_seconds.setdefault("matching_oracles", sum(p["train_seconds"] for p in payloads))
        return [self.model_from_state(p) for p in payloads]

    def method_artifact(self, art: Artifacts, kind: str, fields: dict, compute: Callable[[], Any]) -> Any:
        """A method's cached artifact (e.g. a weight mask) of this original and forget set. The wall time spent here
        is kept out of the measured RTE; a method that wants the artifact's cost in its RTE adds it in
        `reported_seconds` (the weight masks do)."""
        # The code: what `compute` calls (e.g. the mask's scoring) and the task's loss it differentiates.
        seed = derive_seed(art.model_seed, "artifact", kind)
        key = content_key(kind, code=code_digest(compute, self.task.loss), original=art.original_key,
                          forget=self._forget[1], rng=seed, **fields)
        with self._building(seed):
            payload, _ = self.cache.get_or_compute(key, compute, kind)
        return payload

    @contextlib.contextmanager
    def _building(self, seed: int | None = None) -> Iterator[None]:
        """Around work a method asks for that may come from the cache (an artifact, attribution, oracles): its wall
        time is kept out of the method's RTE, and it runs on a fork of torch's RNG (seeded by `seed`, if given), so
        the method draws the same numbers after it whether it was computed or loaded. (Without the fork, SalUn on
        a diffusion task trained differently after computing its mask, whose loss draws noise, than after
        loading it.)"""
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            try:
                yield
            finally:
                self._building_seconds += time.perf_counter() - start

    def splits(self) -> Splits:
        data, _ = self.data()
        return Splits.from_forget_set(data, self._forget[0])

    def _context(self, art: Artifacts, splits: Splits, on_epoch: EpochCallback | None) -> UnlearnContext:
        return UnlearnContext(task=self.task, original=art.original, forget=splits.forget, retain=splits.retain,
                              runtime=self.runtime, generator=self.runtime.generator(art.model_seed, "method"),
                              oracle=lambda: copy.deepcopy(art.oracle), oracle_seconds=art.oracle_seconds,
                              on_epoch=on_epoch, forget_indices=self._forget[0].indices,
                              attribution=self.attribution,
                              oracles=lambda n: self.matching_oracles(n, masks_of(art.original) or None),
                              artifact=lambda kind, fields, compute: self.method_artifact(art, kind, fields, compute))

    def unlearn(self, art: Artifacts, splits: Splits, on_epoch: EpochCallback | None = None) -> tuple[nn.Module | None, str, float]:
        """(θu or None if the method diverged, status, RTE seconds)."""
        ctx = self._context(art, splits, on_epoch)
        self.seed_stage(art.model_seed, "method")
        building = self._building_seconds
        start = time.perf_counter()
        try:
            unlearned, status = self.method.unlearn(ctx), "ok"
            if not finite_model(unlearned):
                raise DivergedError("the unlearned model has non-finite weights or buffers")
        except DivergedError as exc:
            log.warning("method %s diverged: %s", self.method.name, exc)
            unlearned, status = None, "diverged"
        measured = time.perf_counter() - start - (self._building_seconds - building)
        return unlearned, status, self.method.reported_seconds(measured, ctx)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, oracle: nn.Module, splits: Splits) -> dict[str, float]:
        """The task's metrics of one model, and how it differs from the oracle."""
        self.seed_stage(self.seed, "evaluate")
        metrics = self.task.evaluate(model, splits, self.runtime, int(self.cfg.eval.seed))
        # No oracle (scenario.oracle=false): the metrics of the model alone.
        return (metrics | (self.task.compare_to_oracle(model, oracle, splits, self.runtime) if oracle is not None else {})
                | self.builder.evaluate(self.task, model, self.data()[0], self._forget[0], self.runtime))

    def evaluate_reference(self, model: nn.Module, model_key: str, art: Artifacts, splits: Splits) -> dict[str, float]:
        """Metrics of the original / the oracle: deterministic, so cached like the models themselves."""
        key = content_key("eval", code=code_digest(self.evaluate, self.task.evaluate, self.task.compare_to_oracle,
                                                    self.builder.evaluate), model=model_key, oracle=art.oracle_key,
                          forget=self._forget[1],
                          task=plain(self.cfg.data.task), eval_seed=int(self.cfg.eval.seed))
        metrics, _ = self.cache.get_or_compute(key, lambda: self.evaluate(model, art.oracle, splits), "reference metrics")
        return metrics

    def attacked(self, model: nn.Module | None, model_key: str | None, art: Artifacts, splits: Splits,
                 names: list[str]) -> dict[str, float]:
        """The attack's metrics of one model, `<prefix>.<metric>`; NaN for a diverged model or attack. For the
        original and the oracle (`model_key` given) they are deterministic, so cached like reference metrics."""
        prefix = self.attack.prefix
        failed = {f"{prefix}.{name}": float("nan") for name in [*names, *self.attack.figure_names]}
        if model is None:
            return failed

        def compute() -> dict[str, float]:
            self.seed_stage(art.model_seed, "attack")
            ctx = AttackContext(self.task, splits.forget, splits.retain, self.runtime,
                                self.runtime.generator(art.model_seed, "attack"), original=art.original,
                                eval_seed=int(self.cfg.eval.seed))
            try:
                attacked = self.attack.attack(deployed(model), ctx)  # the model a user would deploy (LoRA merged)
            except DivergedError as exc:
                log.warning("attack %s diverged: %s", prefix, exc)
                return failed
            metrics = self.evaluate(attacked, art.oracle, splits) | self.attack.figures(model, attacked, ctx)
            return {f"{prefix}.{name}": value for name, value in metrics.items()}

        if model_key is None:
            return compute()
        key = content_key("attack-eval", code=code_digest(type(self.attack), self.attacked, self.evaluate,
                                                          self.task.evaluate, self.task.compare_to_oracle,
                                                          self.task.loss, self.builder.evaluate),
                          model=model_key, oracle=art.oracle_key, forget=self._forget[1], seed=art.model_seed,
                          attack=[type(self.attack).__qualname__, self.attack.cache_fields()],
                          task=plain(self.cfg.data.task), eval_seed=int(self.cfg.eval.seed))
        return self.cache.get_or_compute(key, compute, f"{prefix} attack on a reference model")[0]

    def population(self, first: Artifacts, first_unlearned: nn.Module, splits: Splits,
                   on_epoch: EpochCallback | None) -> dict[str, float]:
        """KLoM, LiRA and the ε score over N originals, N oracles and the N unlearned models made from them."""
        stats: dict[str, list] = {"original": [], "oracle": [], "unlearned": []}
        utility: dict[str, list] = {"unlearned": [], "oracle": []}
        seeds = self.member_seeds(self.n_models)
        self.train_members("original", seeds[1:], on_epoch)
        self.train_members("oracle", seeds[1:], on_epoch)
        arts = [first] + [self.prepare(on_epoch, model_seed) for model_seed in seeds[1:]]
        stacked = self.unlearn_members(arts[1:], splits)
        for i, art in enumerate(tqdm(arts, desc="population", leave=False, disable=None)):
            unlearned = first_unlearned if i == 0 else stacked[i - 1] if stacked is not None else \
                self.unlearn(art, splits)[0]
            if unlearned is None:
                log.warning("population member %d diverged; population metrics are NaN", i)
                return {name: float("nan") for name in population_metric_names(self.task.utility_metrics)}
            for role, model in (("original", art.original), ("oracle", art.oracle), ("unlearned", unlearned)):
                stats[role].append(self.task.example_statistics(model, splits, self.runtime))
            for role, model in (("unlearned", unlearned), ("oracle", art.oracle)):
                utility[role].append(self.task.evaluate(model, splits, self.runtime, int(self.cfg.eval.seed)))
        return population_metrics(stats, utility, self.task.utility_metrics)

    # ---- the run ------------------------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        return environment(str(self.runtime.device), getattr(self.method, "batch_size", None))

    def record(self, row: dict[str, Any], run_dir: Path | None, loggers: list[Logger]) -> None:
        """The local record (result.json and the table row), then the extra sinks; by one process only."""
        if not self.runtime.is_main:  # data-parallel: rank 0 records the row the processes share
            return
        record_row(row, run_dir, Path(self.cfg.table_path))
        for lg in loggers:
            try:
                lg.log_result(row, run_dir)
            except Exception as exc:  # an extra sink failing must not lose a run whose row is already recorded
                log.warning("logger %s failed (%s: %s); the row is in %s", type(lg).__name__, type(exc).__name__, exc,
                            self.cfg.table_path)

    def run(self, *, run_dir: Path | None = None, loggers: list[Logger] | None = None, labels: dict | None = None,
            command: str = "") -> dict[str, Any]:
        loggers = loggers or []
        self.data()  # validates the forget settings against the data before anything is logged or trained
        for lg in loggers:
            lg.start(run_dir, plain(self.cfg))
        on_epoch = lambda stage, epoch, loss: [lg.log_epoch(stage, epoch, loss) for lg in loggers]  # noqa: E731
        art = self.prepare(on_epoch)
        forget = self._forget[0]
        splits = self.splits()
        log.info("forget set: %d examples (%s); retain: %d; test: %d", len(splits.forget),
                 forget.description.get("builder"), len(splits.retain), len(splits.test))

        unlearned, status, seconds = self.unlearn(art, splits, on_epoch)
        method_figures = self.method.run_metrics()
        original_metrics = self.evaluate_reference(art.original, art.original_key, art, splits)
        oracle_metrics = self.evaluate_reference(art.oracle, art.oracle_key, art, splits)
        if unlearned is not None:
            metrics = self.evaluate(unlearned, art.oracle, splits)
            if not all(np.isfinite(v) for v in metrics.values()):
                log.warning("method %s: the unlearned model's outputs are not finite (metrics %s); status diverged",
                            self.method.name, sorted(k for k, v in metrics.items() if not np.isfinite(v)))
                status = "diverged"
        else:
            metrics = {name: float("nan") for name in oracle_metrics}
        metrics |= method_figures
        # Metrics of the request relative to the original and the oracle (RESTOR's recovery); none for most.
        metrics |= self.builder.relative(metrics, original_metrics, oracle_metrics)
        original_metrics = original_metrics | self.builder.relative(original_metrics, original_metrics, oracle_metrics)
        oracle_metrics = oracle_metrics | self.builder.relative(oracle_metrics, original_metrics, oracle_metrics)
        # ---- attacks (DESIGN.md, "Attacks"): the same probe of θu, θo and θr, scored under its prefix ----------
        if self.attack is not None:
            names = list(oracle_metrics)
            metrics |= self.attacked(unlearned if status == "ok" else None, None, art, splits, names)
            original_metrics = original_metrics | self.attacked(art.original, art.original_key, art, splits, names)
            oracle_metrics = oracle_metrics | self.attacked(art.oracle, art.oracle_key, art, splits, names)
        if self.pruner is not None:
            metrics["sparsity"] = sparsity(unlearned) if unlearned is not None else float("nan")
            original_metrics = original_metrics | {"sparsity": sparsity(art.original)}
            oracle_metrics = oracle_metrics | {"sparsity": sparsity(art.oracle)}
        if self.n_models > 1:
            metrics |= self.population(art, unlearned, splits, on_epoch) if status == "ok" else \
                {name: float("nan") for name in population_metric_names(self.task.utility_metrics)}

        labels = labels or {}
        row = make_row(
            task=self.task.kind, data=str(self.cfg.data.name),
            model=labels.get("model") or str(self.cfg.model._target_).rsplit(".", 1)[-1],
            forget=forget.description, method=self.method.name, method_params=self.method.params(),
            seed=self.seed, status=status, metrics={**metrics, "RTE_s": seconds},
            original={**original_metrics, "RTE_s": float("nan")},
            oracle={**oracle_metrics, "RTE_s": art.oracle_seconds},
            gap_metrics=self.builder.gap_metrics(self.task.gap_metrics), command=command, config=plain(self.cfg),
            run_dir=str(run_dir) if run_dir else None,
            timings=art.timings | ({"precompute_s": self._precompute_seconds} if self._precompute_seconds else {}),
            env=self.environment(),
        )
        if run_dir is not None and self.runtime.is_main:
            # The forget set itself, so it can be reused (forget=from_file) or published.
            write_json_atomic(Path(run_dir) / "forget_indices.json",
                              {"indices": forget.indices.tolist(),
                               "test_indices": None if forget.test_indices is None else forget.test_indices.tolist(),
                               "description": forget.description})
            if unlearned is not None and self.cfg.save_model:
                save_model(unlearned, Path(run_dir), self.model_config)
            if unlearned is not None:
                self.task.save_pictures(Path(run_dir), {"original": art.original, "retrain (oracle)": art.oracle,
                                                        self.method.name: unlearned}, self.runtime, int(self.cfg.eval.seed))
        self.record(row, run_dir, loggers)
        if self.runtime.is_main:
            print("\n" + summary_table(row) + "\n", flush=True)
        return row


def _train_original(job: Path) -> None:
    """The second process of `Experiment._original_beside_oracle`: train the original that `job`/job.pt describes and
    save {payload, epochs as (stage, epoch, loss)} to `job`/result.pt."""
    spec = torch.load(job / "job.pt", weights_only=False)
    experiment = Experiment(OmegaConf.create({**spec["config"], "threads": spec["threads"]}),
                            Cache(spec["cache_root"], enabled=spec["cache_enabled"]))
    epochs: list[tuple[str, int, float]] = []
    payload = experiment._train(spec["model_seed"], experiment.data()[0].train, "original",
                                lambda stage, epoch, loss: epochs.append((stage, epoch, loss)))
    torch.save({"payload": payload, "epochs": epochs}, job / "result.pt")


def finite_model(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host sync)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, run_dir: Path, model_config: dict) -> None:
    """HF models in their own format; classifiers as a plain state_dict (pruning masks folded in) with the
    config that rebuilds them."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(run_dir / "model")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".model.pt.tmp"
    torch.save({"state_dict": plain_state_dict(model), "config": model_config}, tmp)
    tmp.replace(run_dir / "model.pt")
