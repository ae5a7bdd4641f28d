"""Checkpoint selection on a validation request (`method.select=best_val`, docs/tuning.md).

The validation request V is drawn like the reported request F (another random subset of the same size, other
classes of the same number, another concept of the same axis, the worst case among what F leaves; in a stream, the
request before) but shares none of its examples (`ForgetBuilder.validation`), from the run's seed; its oracle is
the retrain on D \\ V, cached by V's indices like any oracle. The method runs from θo on V with its
trajectory recorded against V's oracle, and the checkpoint whose gap (Avg. Gap, or `method.select_metric`'s) is
smallest is chosen; the reported run on F then ends at that step (or epoch). Nothing here reads F's metrics: the
choice is made before the reported run starts.

A trial of `python -m unlearn tune` is the validation run alone, recorded as a row (`trial`).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from unlearn.data.forget import ForgetSet
from unlearn.models.pruning import masks_of
from unlearn.pipeline.store import EpochCallback
from unlearn.pipeline.trajectory import make_trajectory
from unlearn.runtime import Clock, Stopwatch
from unlearn.tasks.base import Splits

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts, Experiment


class Selection:
    """The validation request of experiment `x`, its oracle, and the validation run."""

    def __init__(self, x: "Experiment"):
        self.x = x

    def check(self) -> None:
        """Refuse (ConfigError, before anything trains) where no validation request can be drawn on the data."""
        self.x.builder.check_validation(self.x.data()[0])

    def artifacts(self, art: "Artifacts", on_epoch: EpochCallback | None) -> tuple["Artifacts", Splits, ForgetSet, str]:
        """(θo with V's oracle, V's splits, V, V's key) for the original of `art`."""
        x = self.x
        t0 = time.perf_counter()
        forget, key, _ = x.request.validation_set(art.original, art.original_key)
        validation = self.oracle_of(art, forget, on_epoch, time.perf_counter() - t0)
        return validation, Splits.from_forget_set(x.data()[0], forget), forget, key

    def oracle_of(self, art: "Artifacts", forget: ForgetSet, on_epoch: EpochCallback | None, spent: float = 0.0,
                  masks: dict | None = None) -> "Artifacts":
        """`art`'s starting model with the oracle of the validation request `forget` (the retrain without it, pruned
        with `masks`, default the starting model's); the seconds it took (plus `spent`) in the timings."""
        from unlearn.pipeline.experiment import Artifacts

        x = self.x
        t0 = time.perf_counter()
        masks = masks if masks is not None else masks_of(art.original) or None
        oracle, oracle_key, payload, cached = x.models.oracle_model(art.model_seed, masks, on_epoch, forget=forget)
        timings = {"validation_oracle_s": spent + time.perf_counter() - t0, "validation_oracle_cached": cached}
        return Artifacts(art.model_seed, art.original, art.original_key, oracle, oracle_key,
                         Clock.of(payload, "train_"), art.timings | timings)

    def choose(self, art: "Artifacts", on_epoch: EpochCallback | None) -> dict[str, Any]:
        """Run the method on the validation request and choose its checkpoint (see `run`)."""
        validation, splits, forget, key = self.artifacts(art, on_epoch)
        return self.run(validation, splits, forget, key, on_epoch)

    def run(self, validation: "Artifacts", splits: Splits, forget: ForgetSet, key: str, on_epoch: EpochCallback | None,
            task_request: ForgetSet | None = None) -> dict[str, Any]:
        """The method from `validation.original` on the validation request `forget` (its splits, its oracle in
        `validation`), its trajectory recorded and its best checkpoint chosen: the row's `selection` (rule, metric,
        unit, the chosen position in that unit, its score, and the validation run: its request, oracle and
        trajectory). The validation run's own time is recorded beside, never in the reported RTE. `task_request`:
        what the task reads of the request, where `forget` is a stream's cumulative one."""
        x, protocol = self.x, self.x.protocol
        trajectory = make_trajectory(x, validation, splits, key, keep_best=True)
        with Stopwatch() as clock, x.request.using(forget, key, task_request):
            _, status, _ = x.stage.unlearn(validation, splits, on_epoch, trajectory)
        chosen = trajectory.chosen()
        return {"rule": protocol.select, "metric": protocol.select_metric, "unit": protocol.eval_unit,
                "position": chosen[protocol.eval_unit], "step": chosen["step"], "epoch": chosen["epoch"],
                "score": chosen["score"],
                "validation": {"forget": (task_request or forget).description, "oracle": validation.oracle_key,
                               "oracle_cached": validation.timings["validation_oracle_cached"],
                               "oracle_s": validation.timings["validation_oracle_s"], "status": status,
                               "seconds": clock.wall, "trajectory": trajectory.record()}}
