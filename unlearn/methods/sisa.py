"""SISA (Bourtoule et al., IEEE S&P 2021): exact unlearning by sharded, isolated, sliced, aggregated training.

The training set is split (seeded) into `shards` disjoint shards, each cut into `slices` slices. Stage k of a
shard trains on its retained examples of slices 1..k, starting from stage k−1's checkpoint. Every checkpoint
is cached under the hash of exactly what it was trained on (the retained indices of slices 1..k, the model
seed, the recipe), so the original is built through `build_original` once and a deletion retrains only the
shards that held deleted points, from the first dirty slice; clean prefixes come back from the cache.

Stage k gets max(1, int(k·a) − int((k−1)·a)) epochs with a = 2e/(R+1) (the reference's schedule, which totals
e epochs over the shard); the max(1, ·) fixes the reference's rounding, which left later stages without any
step. Prediction aggregates the shard models by majority vote of their argmax (ties broken by the mean
softmax) or by the mean softmax. RTE is the cost of processing the request: the training time of the dirty
stages. `run_metrics` reports the shards and stages retrained, the request's sample-passes and the speed-up
over retraining every shard from scratch (in sample-passes).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, OneOf, Range
from unlearn.methods.base import Method, OriginalTrainer, UnlearnContext
from unlearn.runtime import Clock, Stopwatch, derive_seed

AGGREGATES = ("vote", "mean")


def shard_plan(n: int, shards: int, slices: int, model_seed: int, method: str) -> list[list[np.ndarray]]:
    """Shard → slices of training indices (sorted within a shard), drawn from the model seed: fixed for the
    model's lifetime, so a request only dirties the slices holding its examples. Shared by SISA and S3T."""
    if shards * slices > n:
        raise ConfigError(f"{method} with {shards} shards × {slices} slices needs at least {shards * slices} "
                          f"training examples (one per slice); there are {n}")
    order = np.random.default_rng(derive_seed(model_seed, f"{method}-shards")).permutation(n)
    return [np.array_split(np.sort(shard), slices) for shard in np.array_split(order, shards)]


class ShardEnsemble(nn.Module):
    """Shard models whose outputs are aggregated; `forward` returns log-probabilities of the aggregate, so
    softmax of the output is the ensemble's predictive distribution. Carries which training indices it has
    forgotten and the keys of the stages it is made of (what the next request starts from)."""

    def __init__(self, models: list[nn.Module], aggregate: str, deleted: np.ndarray, model_seed: int,
                 stage_keys: list[list[str]]):
        super().__init__()
        self.shards = nn.ModuleList(models)
        self.aggregate = aggregate
        self.deleted, self.model_seed, self.stage_keys = deleted, model_seed, stage_keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=-1) for m in self.shards])
        mean = probs.mean(0)
        if self.aggregate == "mean":
            return mean.clamp_min(1e-12).log()
        votes = nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0).float()
        score = votes + mean  # mean < 1: it only breaks ties between equally voted classes
        return (score / score.sum(-1, keepdim=True)).log()


def stage_epochs(epochs: int, slices: int) -> list[int]:
    """Epochs of stages 1..R: the reference's int(k·a) − int((k−1)·a), a = 2e/(R+1), but at least 1 each."""
    a = 2 * epochs / (slices + 1)
    return [max(1, int(k * a) - int((k - 1) * a)) for k in range(1, slices + 1)]


class Sisa(Method):
    name = "sisa"
    supports = ("classification",)  # the aggregate combines class predictions
    knobs = {"shards": COUNT, "slices": COUNT, "aggregate": OneOf(AGGREGATES),
             "epochs": Range(1, integer=True, optional=True)}

    def __init__(self, shards: int = 4, slices: int = 4, aggregate: str = "vote", epochs: int | None = None):
        self.shards, self.slices, self.aggregate = int(shards), int(slices), aggregate
        self.epochs = None if epochs is None else int(epochs)
        self._trainers: dict[int, OriginalTrainer] = {}
        self._figures: dict[str, float] = {}
        self._cached_dirty_seconds = Clock(0.0, 0.0)

    # ---- the sharded model --------------------------------------------------------------------
    def _plan(self, trainer: OriginalTrainer) -> list[list[np.ndarray]]:
        return shard_plan(len(trainer.train), self.shards, self.slices, trainer.model_seed, self.name)

    def _stage_fields(self, trainer: OriginalTrainer) -> dict[str, Any]:
        # The stages' code: the pipeline's training code and this method's own.
        return trainer.key_fields | {"sisa": {"shards": self.shards, "slices": self.slices, "epochs": self.epochs},
                                     "code": trainer.key_fields["code"] + code_digest(type(self))}

    def _build(self, trainer: OriginalTrainer, deleted: np.ndarray, previous: list[list[str]] | None):
        """The ensemble with `deleted` removed; stages whose key differs from `previous` are the dirty ones."""
        epochs = stage_epochs(self.epochs or trainer.recipe.epochs, self.slices)
        fields = self._stage_fields(trainer)
        models, keys = [], []
        figures = {"shards_retrained": 0, "stages_retrained": 0, "request_passes": 0, "full_passes": 0}
        self._cached_dirty_seconds = Clock(0.0, 0.0)
        for s, slices in enumerate(self._plan(trainer)):
            retained = [np.setdiff1d(sl, deleted) for sl in slices]
            state, shard_keys, seen, dirty_shard = None, [], 0, False
            for k in range(self.slices):
                seen += len(retained[k])
                key = content_key("sisa-stage", **fields, shard=s, stage=k, slices=retained[:k + 1])
                payload, cached = trainer.cache.get_or_compute(
                    key, lambda: self._train_stage(trainer, s, k, state, np.concatenate(retained[:k + 1]), epochs[k]),
                    f"sisa shard {s + 1}/{self.shards} stage {k + 1}/{self.slices}")
                state = payload["state_dict"]
                shard_keys.append(key)
                figures["full_passes"] += epochs[k] * seen
                if previous is not None and key != previous[s][k]:
                    dirty_shard = True
                    figures["stages_retrained"] += 1
                    figures["request_passes"] += payload["passes"]
                    if cached:  # made by an earlier run: its recorded training time is this request's cost
                        self._cached_dirty_seconds += Clock.of(payload)
            figures["shards_retrained"] += dirty_shard
            keys.append(shard_keys)
            if seen:  # a shard whose every example was deleted has no model left
                model = trainer.new_model(f"sisa-{s}")
                model.load_state_dict(state)
                models.append(model)
        if not models:
            raise ConfigError("sisa: every shard was emptied by the deletions; nothing is left to predict with")
        figures["live_shards"] = len(models)
        return ShardEnsemble(models, self.aggregate, deleted, trainer.model_seed, keys), figures

    def _train_stage(self, trainer: OriginalTrainer, shard: int, stage: int, state: dict | None,
                     indices: np.ndarray, epochs: int) -> dict[str, Any]:
        model = trainer.new_model(f"sisa-{shard}")
        if state is not None:
            model.load_state_dict(state)
        if len(indices) == 0:  # nothing retained yet in this shard's first slices: the untrained start
            return {"state_dict": _cpu_state(model), "passes": 0, "seconds": 0.0, "cpu_seconds": 0.0}
        recipe = dataclasses.replace(trainer.recipe, epochs=epochs)
        torch.manual_seed(derive_seed(trainer.model_seed, "sisa", str(shard), str(stage)))
        with Stopwatch() as clock:
            trainer.task.fit(model, trainer.train.subset(indices), recipe, trainer.runtime,
                             trainer.runtime.generator(trainer.model_seed, "sisa", str(shard), str(stage)),
                             desc=f"sisa shard {shard + 1} stage {stage + 1}", on_epoch=trainer.on_epoch)
        return {"state_dict": _cpu_state(model), "passes": epochs * len(indices), **clock.payload()}

    # ---- the Method interface -----------------------------------------------------------------
    def build_original(self, trainer: OriginalTrainer) -> tuple[nn.Module, str]:
        self._trainers[trainer.model_seed] = trainer
        ensemble, _ = self._build(trainer, np.zeros(0, dtype=np.int64), None)
        return ensemble, content_key("sisa-original", **self._stage_fields(trainer))

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        ensemble = ctx.original
        if not isinstance(ensemble, ShardEnsemble) or ensemble.model_seed not in self._trainers:
            raise ConfigError("sisa unlearns the shard ensemble it built as the original (Method.build_original)")
        deleted = np.union1d(ensemble.deleted, np.asarray(ctx.forget_indices, dtype=np.int64))
        unlearned, figures = self._build(self._trainers[ensemble.model_seed], deleted, ensemble.stage_keys)
        figures["speedup"] = figures["full_passes"] / figures["request_passes"] if figures["request_passes"] else float("nan")
        self._figures = {k: float(v) for k, v in figures.items()}
        return unlearned

    def reported_seconds(self, measured: Clock, ctx: UnlearnContext) -> Clock:
        return measured + self._cached_dirty_seconds

    def run_metrics(self) -> dict[str, float]:
        return dict(self._figures)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
