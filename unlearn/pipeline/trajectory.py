"""The unlearning trajectory (`method.eval_every`, docs/tuning.md): the model evaluated during the method's loop on a
cheap subset of the metrics, against its oracle's level on the same examples.

A `Trajectory` is the loop's `Probe` (unlearn/training.py): before the first step and every K steps or epochs it
evaluates the model on at most `method.eval_size` examples of each split (a fixed subset, drawn from the evaluation
seed, the same for every checkpoint and for the oracle) and records one point: the step, the epoch, each of the
protocol's metrics and the gap to the oracle (Avg. Gap over the recorded gap metrics). Its evaluation runs inside
the method stage's `building` context, so its time is kept out of the method's RTE and it draws nothing from the
RNG the method's loop uses. It can keep the best checkpoint by its gap (`keep_best`: a validation run) or end the
loop at a chosen point (`stop_at`: the reported run of `method.select=best_val`).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.config import plain
from unlearn.errors import ConfigError
from unlearn.eval.gap import average_gap, gaps
from unlearn.protocol import Protocol
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts, Experiment

SPLITS = ("forget", "retain", "test", "val")


def subsample(splits: Splits, size: int, seed: int) -> Splits:
    """At most `size` examples of each split, a fixed subset drawn from `seed` (sorted indices, so the subset's
    order is the split's)."""
    def part(name: str):
        data = getattr(splits, name)
        if len(data) <= size:
            return data
        rng = np.random.default_rng(derive_seed(seed, "trajectory", name))
        return data.subset(np.sort(rng.permutation(len(data))[:size]))

    return Splits(**{name: part(name) for name in SPLITS})


@dataclass
class Trajectory:
    """The probe of one method run (see the module docstring).

    `oracle_metrics()` gives the oracle's metrics on the same subset (cached by the caller); `building()` is the
    method stage's context that keeps time out of RTE. `stop_at`: end the loop at the first checkpoint at or after
    this position (in `protocol.eval_unit`s); `keep_best`: keep a copy of the checkpoint with the smallest score
    (`protocol.select_metric`'s gap) and hand it back from `finish`."""

    protocol: Protocol
    task: Task
    runtime: Runtime
    eval_seed: int
    splits: Splits                          # already subsampled (`subsample`)
    oracle_metrics: Callable[[], dict[str, float]]
    building: Callable[[], ContextManager[None]] = contextlib.nullcontext
    stop_at: float | None = None
    keep_best: bool = False
    points: list[dict[str, float]] = field(default_factory=list)
    _best: tuple[float, int, dict[str, Any]] | None = field(default=None, init=False, repr=False)  # (score, index, weights)
    _oracle: dict[str, float] | None = field(default=None, init=False, repr=False)

    @property
    def every(self) -> int:
        return int(self.protocol.eval_every)

    @property
    def unit(self) -> str:
        return self.protocol.eval_unit

    @property
    def names(self) -> tuple[str, ...]:
        return self.protocol.metrics(self.task.gap_metrics)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        """The recorded metrics of `model` on the subset; ConfigError naming the available ones where
        `method.eval_metrics` names a metric the task does not report (raised at step 0, before any unlearning)."""
        values = self.task.evaluate(model, self.splits, self.runtime, self.eval_seed)
        missing = [name for name in self.names if name not in values]
        if missing:
            raise ConfigError(f"method.eval_metrics names {missing}, which the {self.task.kind} task does not report; "
                              f"it reports: {', '.join(values)}")
        return {name: float(values[name]) for name in self.names}

    def oracle(self) -> dict[str, float]:
        if self._oracle is None:
            self._oracle = self.oracle_metrics()
        return self._oracle

    def score(self, point: dict[str, float]) -> float:
        """What selection minimises: Avg. Gap, or the gap of `protocol.select_metric` (inf where not finite)."""
        metric = self.protocol.select_metric
        value = point["avg_gap"] if metric == "avg_gap" else abs(point[metric] - self.oracle()[metric])
        return value if math.isfinite(value) else math.inf

    def __call__(self, model: nn.Module, step: int, epoch: float) -> bool:
        """Record a point for the model after `step` optimiser steps (`epoch` epochs); True: end the loop here."""
        with self.building():
            values = self.metrics(model)
            point = {"step": int(step), "epoch": float(epoch), **values,
                     "avg_gap": average_gap(gaps(values, self.oracle(), [m for m in self.names
                                                                         if m in self.task.gap_metrics]))}
            self.points.append(point)
            if self.keep_best and (self._best is None or self.score(point) < self._best[0]):
                self._best = (self.score(point), len(self.points) - 1,
                              {k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.stop_at is not None and point[self.unit] >= self.stop_at

    def finish(self, model: nn.Module | None) -> nn.Module | None:
        """The model to report: the kept best checkpoint (`keep_best`), else `model` as the loop left it."""
        if model is None or not self.keep_best or self._best is None:
            return model
        model.load_state_dict(self._best[2])
        return model

    def chosen(self) -> dict[str, float] | None:
        """The kept best point (`keep_best`) with its score, or None."""
        if self._best is None:
            return None
        return self.points[self._best[1]] | {"score": self._best[0]}

    def record(self) -> dict[str, Any]:
        """The row's `trajectory`: its settings, one list per field across the points (step, epoch, each metric,
        avg_gap: columns, so a results DataFrame keeps them as tuples) and the oracle's level of each metric."""
        fields = list(dict.fromkeys(k for p in self.points for k in p))
        return {"unit": self.unit, "every": self.every, "size": self.protocol.eval_size, "metrics": list(self.names),
                **{k: [p.get(k, float("nan")) for p in self.points] for k in fields}, "oracle": dict(self.oracle())}


def make_trajectory(x: "Experiment", art: "Artifacts", splits: Splits, forget_key: str, *,
                    stop_at: float | None = None, keep_best: bool = False) -> Trajectory | None:
    """The trajectory of one method run of experiment `x` on `splits` (the request whose identity is `forget_key`),
    measured against `art.oracle`, whose level on the subset is cached by its identity, the request, the subset and
    the metrics. None where the run records none (`method.eval_every` unset, or no oracle to measure against)."""
    protocol = x.protocol
    if protocol.eval_every is None or art.oracle is None:
        return None
    eval_seed = int(x.cfg.eval.seed)
    trajectory = Trajectory(protocol, x.task, x.runtime, eval_seed, subsample(splits, protocol.eval_size, eval_seed),
                            lambda: {}, x.stage.building, stop_at, keep_best)
    key = content_key("trajectory-reference", code=code_digest(Trajectory.metrics, subsample, x.task.evaluate),
                      model=art.oracle_key, forget=forget_key, size=protocol.eval_size, metrics=list(trajectory.names),
                      eval_seed=eval_seed, low_fpr=x.task.low_fpr, task=plain(x.cfg.data.task))
    trajectory.oracle_metrics = lambda: x.cache.get_or_compute(
        key, lambda: trajectory.metrics(art.oracle), "trajectory reference (oracle)")[0]
    return trajectory
