"""Populations (DESIGN.md, "Scale"): the members of `eval.oracles=N` — N originals, N oracles and the N models
the method makes from them — trained stacked where the task, model and method allow it, and the population
metrics (KLoM, LiRA, the ε score) computed from them.

Each member's part of the metrics (the per-example statistics of its original, oracle and unlearned model, and the
utility of the last two) is cached on its own (`Members`), so the members can be built by separate jobs into one
shared cache (`stage=members`, unlearn/pipeline/jobs.py) and the population run only computes the metrics."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.config import plain
from unlearn.errors import DivergedError
from unlearn.eval.population import (klom_yardsticks, population_metric_names, population_metrics, rmia_metrics,
                                     unresolved_splits)
from unlearn.eval.rmia import RMIA_GAMMA, RMIA_OFFLINE_A
from unlearn.pipeline.rules import first_reason
from unlearn.pipeline.store import EpochCallback, ModelStore, Payload, state_dict
from unlearn.runtime import Stopwatch, derive_seed
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
        """The payload of a stacked member the store is about to save (a stack of one if `train` did not make it)."""
        if key not in self._payloads:
            self.train(stage, [model_seed], keep=True)
        return self._payloads.pop(key)

    def train(self, stage: str, seeds: list[int], on_epoch: EpochCallback | None = None, keep: bool = False) -> None:
        """Train the dense originals (stage "original") or oracles ("oracle") of `seeds` that are stacked members
        and not cached yet as one stacked computation, and save them (`keep`: hand them to the store instead, which
        saves them). Member i gets the init, data order and augmentation of its own seed, as when trained alone."""
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
        missing = lambda: [(s, k) for s, k in zip(seeds, keys)  # noqa: E731
                           if k not in self._payloads and not store.cache.contains(k)]
        if not missing():
            return
        # Under the members' locks (taken in sorted order), so a job that needs one of them waits for this stack
        # instead of training it again (re-entrant: `payload` calls this under the store's lock of its key).
        with store.cache.locked(k for _, k in missing()):
            todo = missing()  # another job may have saved some while we waited
            if not todo:
                return
            log.info("%d %ss trained stacked", len(todo), stage)
            with Stopwatch() as clock:
                models = store.task.fit_stacked([store.new_model(seed, stage) for seed, _ in todo], train_set,
                                                store.recipe, store.runtime,
                                                [store.runtime.generator(seed, stage) for seed, _ in todo],
                                                desc=f"{stage} x{len(todo)} (stacked)", on_epoch=on_epoch)
            # Each member's share of the stack's wall and CPU time.
            share = {"train_seconds": clock.wall / len(todo), "train_cpu_seconds": clock.cpu / len(todo)}
            for (_, key), model in zip(todo, models):
                payload = {"state_dict": state_dict(model), "masks": None, "checkpoint": None,
                           "model_config": store.model_config, **share, "stacked": len(todo)}
                if keep or not store.cache.enabled:
                    self._payloads[key] = payload
                else:
                    store.cache.save(key, payload)

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


class Members:
    """Each population member's part of the metrics, cached by the identity of the member's unlearned model, its
    original and its oracle: {"stats": {role: {split: per-example statistic}} for original/oracle/unlearned,
    "utility": {role: metrics} for unlearned/oracle}, or {"diverged": True} when the method diverged on it."""

    def __init__(self, experiment: "Experiment", splits: Splits | None = None):
        self.x, self.splits = experiment, splits  # splits: needed to compute a record, not to key one
        self._code: str | None = None

    def stacked_method(self) -> bool:
        """Whether the population runs the method on members 1..N-1 as one stacked computation (a function of the
        config, like `Stack.member`: the member's record is keyed by it)."""
        x = self.x
        return x.n_models - 1 >= 2 and x.stack.why_not() is None and x.method.why_not_stacked() is None

    def key(self, art: "Artifacts", index: int) -> str:
        from unlearn.pipeline.step import unlearned_identity  # step.py runs populations: imported when used

        x = self.x
        if self._code is None:
            self._code = code_digest(Members.record, x.task.example_statistics, x.task.evaluate, x.stage.unlearn)
        return content_key("population-member", code=self._code,
                           unlearned=unlearned_identity(art.original_key, x, x.request.forget_key, art.model_seed),
                           original=art.original_key, oracle=art.oracle_key,
                           stacked=index > 0 and self.stacked_method(), task=plain(x.cfg.data.task),
                           low_fpr=x.task.low_fpr, eval_seed=int(x.cfg.eval.seed))

    def record(self, art: "Artifacts", unlearned: nn.Module | None) -> dict[str, Any]:
        x, splits = self.x, self.splits
        if unlearned is None:
            return {"diverged": True}
        models = {"original": art.original, "oracle": art.oracle, "unlearned": unlearned}
        return {"diverged": False,
                "stats": {role: x.task.example_statistics(model, splits, x.runtime) for role, model in models.items()},
                "utility": {role: x.task.evaluate(models[role], splits, x.runtime, int(x.cfg.eval.seed))
                            for role in ("unlearned", "oracle")}}

    def build(self, art: "Artifacts", index: int, unlearned: nn.Module | None = None) -> tuple[dict[str, Any], bool]:
        """(member `index`'s record, cached): computed under its lock from `unlearned`, or else from the method run
        here on `art`'s original (alone)."""
        compute = lambda: self.record(art, unlearned if unlearned is not None  # noqa: E731
                                      else self.x.stage.unlearn(art, self.splits)[0])
        return self.x.cache.get_or_compute(self.key(art, index), compute, f"population member {index}")

    def all(self, arts: list["Artifacts"], first_unlearned: nn.Module) -> list[dict[str, Any]]:
        """Every member's record: member 0 from the run's own unlearned model, the others from the cache or from the
        method, stacked where the population stacks it (then under all their locks at once)."""
        x = self.x
        records = [self.build(arts[0], 0, first_unlearned)[0]]
        if not self.stacked_method():
            return records + [self.build(art, i)[0] for i, art in enumerate(arts[1:], 1)]
        keys = {i: self.key(art, i) for i, art in enumerate(arts[1:], 1)}
        found = {i: x.cache.load(key) for i, key in keys.items()}
        with x.cache.locked(keys[i] for i, record in found.items() if record is None):
            found = {i: record if record is not None else x.cache.load(keys[i]) for i, record in found.items()}
            todo = [i for i, record in found.items() if record is None]
            stacked = x.stack.unlearn(x, [arts[i] for i in todo], self.splits) if todo else None
            for j, i in enumerate(todo):
                log.info("population member %d: not cached, computing %s", i, keys[i])
                unlearned = stacked[j] if stacked is not None else x.stage.unlearn(arts[i], self.splits)[0]
                found[i] = self.record(arts[i], unlearned)
                x.cache.save(keys[i], found[i])
        return records + [found[i] for i in sorted(found)]


def population(experiment: "Experiment", first: "Artifacts", first_unlearned: nn.Module, splits: Splits,
               on_epoch: EpochCallback | None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(KLoM, LiRA and the ε score over N originals, N oracles and the N unlearned models made from them; the
    KLoM yardsticks by reference role: original vs oracles, retrains vs retrains, `klom_yardsticks`). Each
    member's part comes from the cache where a job (or an earlier run) built it."""
    task = experiment.task
    seeds = member_seeds(experiment.seed, experiment.n_models)
    experiment.stack.train("original", seeds[1:], on_epoch)
    experiment.stack.train("oracle", seeds[1:], on_epoch)
    arts = [first] + [experiment.prepare(on_epoch, model_seed) for model_seed in seeds[1:]]
    records = Members(experiment, splits).all(arts, first_unlearned)
    for i, record in enumerate(records):
        if record["diverged"]:
            log.warning("population member %d diverged; population metrics are NaN", i)
            return {name: float("nan") for name in population_metric_names(task.utility_metrics, task.low_fpr)}, {}
    stats = {role: [record["stats"][role] for record in records] for role in ("original", "oracle", "unlearned")}
    utility = {role: [record["utility"][role] for record in records] for role in ("unlearned", "oracle")}
    logp = {role: [{split: task.example_logprob(v) for split, v in member.items()} for member in members]
            for role, members in stats.items()}
    cfg = experiment.cfg.eval
    rmia = rmia_metrics(logp, task.low_fpr, float(cfg.get("rmia_gamma", RMIA_GAMMA)),
                        float(cfg.get("rmia_offline_a", RMIA_OFFLINE_A)))
    yardsticks = klom_yardsticks(stats)
    unresolved = unresolved_splits(yardsticks)
    if unresolved:
        log.warning("KLoM with eval.oracles=%d cannot tell the original from independent retrains on %s (original vs "
                    "oracles %s; retrains vs retrains %s nats): raise eval.oracles before reading KLoM there",
                    experiment.n_models, ", ".join(unresolved),
                    ", ".join(f"{yardsticks['original'][f'klom_{s}']:.2f}" for s in unresolved),
                    ", ".join(f"{yardsticks['oracle'][f'klom_{s}']:.2f}" for s in unresolved))
    return population_metrics(stats, utility, task.utility_metrics) | rmia, yardsticks
