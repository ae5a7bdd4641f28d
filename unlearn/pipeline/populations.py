"""Populations (DESIGN.md, "Scale"): the members of `eval.oracles=N` — N originals, N oracles and the N models
the method makes from them — trained stacked where the task, model and method allow it, and the population
metrics (KLoM, LiRA, the ε score) computed from them."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unlearn.errors import DivergedError
from unlearn.eval.population import population_metric_names, population_metrics, rmia_metrics
from unlearn.eval.rmia import RMIA_GAMMA, RMIA_OFFLINE_A
from unlearn.pipeline.rules import first_reason
from unlearn.pipeline.store import EpochCallback, ModelStore, Payload, state_dict
from unlearn.runtime import derive_seed
from unlearn.tasks.base import Splits
from unlearn.training import stackable

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts, Experiment

log = logging.getLogger("unlearn")


def finite_model(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (one host sync)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def member_seeds(seed: int, n: int, namespace: str = "member") -> list[int]:
    """Model seeds of a population: the run's own seed first (for the default namespace), then derived ones.
    Population members and the attribution ensemble share them, so they share cached originals."""
    first = [seed] if namespace == "member" else []
    return first + [derive_seed(seed, namespace, str(i)) % 2**31 for i in range(len(first), n)]


class Stack:
    """Population members trained as one stacked computation, handed to the store under each member's key."""

    def __init__(self, store: ModelStore):
        self.store = store
        self._payloads: dict[str, Payload] = {}  # trained stacked, by key, until the store takes them
        self._refusal: str | None = None

    def why_not(self) -> str | None:
        """Why this run's population members are trained one after another; None when they are trained stacked."""
        if self._refusal is None:
            with torch.random.fork_rng(devices=[]):  # the probe model must not move the stages' seeded RNG
                self._refusal = self._reason() or ""
        return self._refusal or None

    def _reason(self) -> str | None:
        store = self.store
        stacked = store.cfg.eval.get("stacked", "auto")
        return first_reason([
            (lambda: stacked is False, "eval.stacked=false"),
            # auto: stacked on a GPU only; on CPU it measured slower than one model after another
            # (results/throughput_cpu.md, results/population_scale.md).
            (lambda: stacked == "auto" and store.runtime.device.type == "cpu",
             "eval.stacked=auto trains stacked on a GPU only (slower on CPU)"),
            (lambda: not store.task.stackable, "the task draws from torch's global RNG"),
            (lambda: store.pruner is not None, "pruning gives each member masks of its own"),
        ]) or stackable(store.new_model(store.seed, "probe"))

    def member(self, model_seed: int) -> bool:
        """Whether `model_seed`'s original and oracle are trained stacked: every population, ensemble and matching
        member but the run's own seed (so a run's own row is the same for every eval.oracles), where the task, model
        and pruning allow it. A function of the config, never of what is cached, so runs stay reproducible."""
        return model_seed != self.store.seed and self.why_not() is None

    def payload(self, stage: str, model_seed: int, key: str) -> Payload:
        if key not in self._payloads:
            self.train(stage, [model_seed])
        return self._payloads.pop(key)

    def train(self, stage: str, seeds: list[int], on_epoch: EpochCallback | None = None) -> None:
        """Train the dense originals (stage "original") or oracles ("oracle") of `seeds` that are stacked members
        and not cached yet as one stacked computation. Member i gets the init, data order and augmentation of its
        own seed, as when trained alone."""
        store = self.store
        if self.why_not() is not None:
            log.info("%d %ss trained one after another, not stacked: %s", len(seeds), stage, self.why_not())
            return
        if stage == "original" and store.builds_own_original():
            return  # the method builds its own originals (exact methods)
        data, _ = store.request.data()
        seeds = [seed for seed in seeds if self.member(seed)]
        if stage == "original":
            keys = [store.dense_original_key(seed) for seed in seeds]
            train_set = data.train
        else:
            keys = [store.oracle_key(seed, None) for seed in seeds]
            train_set = data.train.subset(store.request.forget.retain_indices(len(data.train)))
        todo = [(s, k) for s, k in zip(seeds, keys) if k not in self._payloads and not store.cache.contains(k)]
        if not todo:
            return
        log.info("%d %ss trained stacked", len(todo), stage)
        start = time.perf_counter()
        models = store.task.fit_stacked([store.new_model(seed, stage) for seed, _ in todo], train_set, store.recipe,
                                        store.runtime, [store.runtime.generator(seed, stage) for seed, _ in todo],
                                        desc=f"{stage} x{len(todo)} (stacked)", on_epoch=on_epoch)
        seconds = (time.perf_counter() - start) / len(todo)  # each member's share of the stack's wall time
        for (_, key), model in zip(todo, models):
            self._payloads[key] = {"state_dict": state_dict(model), "masks": None, "checkpoint": None,
                                   "model_config": store.model_config, "train_seconds": seconds, "stacked": len(todo)}

    def unlearn(self, experiment: "Experiment", arts: list["Artifacts"], splits: Splits) -> list[nn.Module | None] | None:
        """The method on each of `arts`' originals as one stacked computation (None entries: a member's weights
        are not finite); None when the method or model cannot be stacked (logged), or the stack diverged as a
        whole, in which case the caller runs the members one by one."""
        if len(arts) < 2:
            return None
        method = experiment.method
        reason = self.why_not() or method.why_not_stacked() or stackable(arts[0].original)
        if reason is not None:
            log.info("the method on %d originals runs one after another, not stacked: %s", len(arts), reason)
            return None
        ctxs = [experiment.stage.context(art, splits, None) for art in arts]
        log.info("the method on %d originals runs stacked", len(arts))
        try:
            models = method.unlearn_stacked(ctxs)
        except DivergedError as exc:
            log.warning("stacked method %s diverged (%s); running its members one by one", method.name, exc)
            return None
        return [model if finite_model(model) else None for model in models]


def population(experiment: "Experiment", first: "Artifacts", first_unlearned: nn.Module, splits: Splits,
               on_epoch: EpochCallback | None) -> dict[str, float]:
    """KLoM, LiRA and the ε score over N originals, N oracles and the N unlearned models made from them."""
    task, runtime, eval_seed = experiment.task, experiment.runtime, int(experiment.cfg.eval.seed)
    stats: dict[str, list[Any]] = {"original": [], "oracle": [], "unlearned": []}
    utility: dict[str, list[Any]] = {"unlearned": [], "oracle": []}
    seeds = member_seeds(experiment.seed, experiment.n_models)
    experiment.stack.train("original", seeds[1:], on_epoch)
    experiment.stack.train("oracle", seeds[1:], on_epoch)
    arts = [first] + [experiment.prepare(on_epoch, model_seed) for model_seed in seeds[1:]]
    stacked = experiment.stack.unlearn(experiment, arts[1:], splits)
    for i, art in enumerate(tqdm(arts, desc="population", leave=False, disable=None)):
        unlearned = first_unlearned if i == 0 else stacked[i - 1] if stacked is not None else \
            experiment.stage.unlearn(art, splits)[0]
        if unlearned is None:
            log.warning("population member %d diverged; population metrics are NaN", i)
            return {name: float("nan") for name in population_metric_names(task.utility_metrics, task.low_fpr)}
        for role, model in (("original", art.original), ("oracle", art.oracle), ("unlearned", unlearned)):
            stats[role].append(task.example_statistics(model, splits, runtime))
        for role, model in (("unlearned", unlearned), ("oracle", art.oracle)):
            utility[role].append(task.evaluate(model, splits, runtime, eval_seed))
    logp = {role: [{split: task.example_logprob(v) for split, v in member.items()} for member in members]
            for role, members in stats.items()}
    cfg = experiment.cfg.eval
    rmia = rmia_metrics(logp, task.low_fpr, float(cfg.get("rmia_gamma", RMIA_GAMMA)),
                        float(cfg.get("rmia_offline_a", RMIA_OFFLINE_A)))
    return population_metrics(stats, utility, task.utility_metrics) | rmia
