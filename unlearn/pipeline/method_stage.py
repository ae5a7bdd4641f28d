"""The method stage: θ_start → θu, timed as RTE. What a method asks for through its context — cached artifacts
(weight masks), TRAK attribution, matching oracles, a frozen copy of its start — is built here, its wall time kept
out of the RTE, and keyed by the identity of the model it is computed from (DESIGN.md, "Lineage")."""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn

from unlearn.attribution import Attribution
from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.errors import DivergedError
from unlearn.methods.base import UnlearnContext
from unlearn.models.pruning import masks_of
from unlearn.pipeline.populations import finite_model, member_seeds
from unlearn.pipeline.store import EpochCallback, seed_stage
from unlearn.runtime import Clock, Stopwatch, derive_seed
from unlearn.tasks.base import Splits
from unlearn.training import Probe

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts, Experiment

log = logging.getLogger("unlearn")


class MethodStage:
    """Runs the experiment's method on an original (`Artifacts`) and what the method asks for."""

    def __init__(self, experiment: "Experiment"):
        self.x = experiment
        self.building_seconds = Clock(0.0, 0.0)  # time spent on a method's requests (kept out of its RTE)
        # What those requests cost to make, cached or not (recorded in the row's timings as precompute_s).
        self.precompute_seconds: dict[str, float] = {}
        self._attribution: Attribution | None = None

    def context(self, art: "Artifacts", splits: Splits, on_epoch: EpochCallback | None,
                probe: Probe | None = None) -> UnlearnContext:
        x = self.x
        return UnlearnContext(task=x.task, original=art.original, forget=splits.forget, retain=splits.retain,
                              runtime=x.runtime, generator=x.runtime.generator(art.model_seed, "method"),
                              oracle=lambda: copy.deepcopy(art.oracle), oracle_seconds=art.oracle_time.wall,
                              oracle_cpu_seconds=art.oracle_time.cpu,
                              on_epoch=on_epoch, forget_indices=x.request.forget.indices,
                              attribution=self.attribution,
                              oracles=lambda n: self.matching_oracles(n, masks_of(art.original) or None),
                              artifact=lambda kind, fields, compute: self.artifact(art, kind, fields, compute),
                              probe=probe)

    def unlearn(self, art: "Artifacts", splits: Splits, on_epoch: EpochCallback | None = None,
                probe: Probe | None = None) -> tuple[nn.Module | None, str, Clock]:
        """(θu or None if the method diverged, status, RTE: wall and CPU seconds). `probe`: the trajectory
        (method.eval_every), whose evaluation time `building` keeps out of the RTE."""
        method = self.x.method
        ctx = self.context(art, splits, on_epoch, probe)
        seed_stage(art.model_seed, "method")
        building = self.building_seconds
        with Stopwatch() as clock:
            try:
                unlearned, status = method.unlearn(ctx), "ok"
                if not finite_model(unlearned):
                    raise DivergedError("the unlearned model has non-finite weights or buffers")
            except DivergedError as exc:
                log.warning("method %s diverged: %s", method.name, exc)
                unlearned, status = None, "diverged"
        measured = clock.clock - (self.building_seconds - building)
        return unlearned, status, method.reported_seconds(measured, ctx)

    def artifact(self, art: "Artifacts", kind: str, fields: dict, compute: Callable[[], Any]) -> Any:
        """A method's cached artifact (e.g. a weight mask) of the model it starts from (`art.original_key`, that
        model's identity) and the forget set. The wall time spent here is kept out of the measured RTE; a method
        that wants the artifact's cost in its RTE adds it in `reported_seconds` (the weight masks do)."""
        # The code: what `compute` calls (e.g. the mask's scoring) and the task's loss it differentiates.
        seed = derive_seed(art.model_seed, "artifact", kind)
        key = content_key(kind, code=code_digest(compute, self.x.task.loss), original=art.original_key,
                          forget=self.x.request.forget_key, rng=seed, **fields)
        with self.building(seed):
            payload, _ = self.x.cache.get_or_compute(key, compute, kind)
        return payload

    def attribution(self) -> Attribution:
        """TRAK attribution from an ensemble of originals (the population's first `attribution.models`),
        cached by those originals, the data and the attribution settings; computed once per experiment."""
        if self._attribution is None:
            x = self.x
            with self.building():
                data, data_key = x.data()
                seeds = member_seeds(x.seed, x.attributor.models)
                x.stack.train("original", seeds)
                originals = [x.models.original(seed, None) for seed in seeds]
                models = [x.models.model_from_state(payload) for payload, _, _ in originals]
                key = content_key("attribution", code=code_digest(type(x.attributor)), data=data_key,
                                  originals=[k for _, k, _ in originals], attributor=x.attributor.cache_fields())
                payload, _ = x.cache.get_or_compute(key, lambda: x.attributor.fit(models, data.train),
                                                    "attribution (TRAK)")
                # The run's own original exists anyway; the other ensemble members are the attribution's cost.
                ensemble = sum(p.get("train_seconds", 0.0) for p, _, _ in originals[1:])
                self.precompute_seconds["attribution"] = payload["seconds"] + ensemble
                log.info("attribution: %d models, projection dim %d; %.1f s to score + %.1f s to train the extra models",
                         len(models), x.attributor.proj_dim, payload["seconds"], ensemble)
                self._attribution = x.attributor.attribution(models, payload, x.runtime)
        return self._attribution

    def matching_oracles(self, n: int, masks: dict | None) -> list[nn.Module]:
        """n retrains on D \\ F with seeds of their own, disjoint from the evaluation population's, so a method
        that matches them is not scored against the very models it copied."""
        x = self.x
        seeds = member_seeds(x.seed, n, "matching")
        with self.building():
            x.stack.train("oracle", seeds)
            payloads = [x.models.oracle(seed, masks)[0] for seed in seeds]
        # The run's own matching oracles; population members (with pruning, their own masks) add evaluation cost.
        self.precompute_seconds.setdefault("matching_oracles", sum(p["train_seconds"] for p in payloads))
        return [x.models.model_from_state(p) for p in payloads]

    @contextlib.contextmanager
    def building(self, seed: int | None = None) -> Iterator[None]:
        """Around work a method asks for that may come from the cache (an artifact, attribution, oracles): its wall
        time is kept out of the method's RTE, and it runs on a fork of torch's RNG (seeded by `seed`, if given), so
        the method draws the same numbers after it whether it was computed or loaded. (Without the fork, SalUn on
        a diffusion task trained differently after computing its mask, whose loss draws noise, than after
        loading it.)"""
        clock = Stopwatch()
        try:
            with clock, torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                yield
        finally:
            self.building_seconds += clock.clock
