"""The one step (DESIGN.md, "One step engine"): everything a forget request gets, whichever scenario sends it.

From a starting model and its identity, a request and the oracle of that request: the method (timed), the
evaluation of θu, the cached reference metrics of the original and the oracle, the request's relative metrics,
the attack on θu and on the references, sparsity, the population metrics, pictures, and the row. `single` runs
one step; `sequence` one per request, each starting from the model the step before made.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.config import plain
from unlearn.eval.population import population_metric_names
from unlearn.models.pruning import sparsity
from unlearn.pipeline.populations import population
from unlearn.pipeline.store import EpochCallback
from unlearn.progress import Stages
from unlearn.pipeline.trajectory import Trajectory
from unlearn.report.loggers import Logger, write_json_atomic, write_text_atomic
from unlearn.report.row import make_row
from unlearn.runtime import Clock
from unlearn.tasks.base import Splits
from unlearn.training import optimise

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts, Experiment

log = logging.getLogger("unlearn")
#: extra metrics a scenario adds for a model of the step ("unlearned", "original" or "oracle")
ExtraMetrics = Callable[[nn.Module, str], dict[str, float]]


def unlearned_identity(start: str, experiment: "Experiment", forget_key: str, model_seed: int) -> str:
    """The identity of the model a method made: a hash of the identity it started from, the method and its
    parameters, the request and the code (DESIGN.md, "Lineage"). What is computed from that model later (a stream's
    next weight mask, say) is keyed by it, never by the original's."""
    method = experiment.method
    return content_key("unlearned", start=start, method=[type(method).__qualname__, method.params()],
                       forget=forget_key, seed=model_seed, precision=experiment.runtime.precision,
                       code=code_digest(type(method), optimise))


@dataclass
class Step:
    """One request of a run. `art` holds the model the method starts from (`art.original`, with its identity
    `art.original_key`) and the request's oracle; `original`/`original_key` are the run's θo, the reference row."""

    art: "Artifacts"
    splits: Splits
    original: nn.Module
    original_key: str
    on_epoch: EpochCallback | None = None
    extra: ExtraMetrics | None = None       # a scenario's own metrics of each model (a stream's earlier_*)
    row_fields: dict[str, Any] = field(default_factory=dict)
    forget_record: dict[str, Any] | None = None  # written to forget_indices.json (default: the request's indices)
    diverged_before: bool = False           # a stream whose method diverged earlier: no model to start from
    trajectory: Trajectory | None = None    # method.eval_every: the method's loop is looked into (docs/tuning.md)

    def run(self, x: "Experiment", *, run_dir: Path | None, loggers: list[Logger], labels: dict, command: str,
            save_model: bool, finish: Callable[[dict, dict, dict, float], None] | None = None
            ) -> tuple[dict[str, Any], nn.Module | None]:
        """(the row, θu or None if the method diverged); the row is recorded and the run dir written."""
        art, splits, task, ev = self.art, self.splits, x.task, x.evaluator
        ev.judge = self.original, self.original_key  # the run's original judges every model's answers (LM fluency)
        if self.diverged_before:
            unlearned, status, seconds, method_figures = None, "diverged", Clock(float("nan"), float("nan")), {}
        else:
            unlearned, status, seconds = x.stage.unlearn(art, splits, self.on_epoch, self.trajectory)
            method_figures = x.method.run_metrics()
            if self.trajectory is not None:  # a tuning trial's kept best checkpoint, else θu as the loop left it
                unlearned = self.trajectory.finish(unlearned)
        refs = {"original": (self.original, self.original_key), "oracle": (art.oracle, art.oracle_key)}
        refs = {role: ref for role, ref in refs.items() if ref[0] is not None}
        parts = (len(refs) + 1) * (1 + (x.attack is not None))
        with Stages("evaluation", parts) as stages:
            metrics, reference, status = self._evaluate(x, stages, refs, unlearned, status, method_figures)
        if x.pruner is not None:
            metrics["sparsity"] = sparsity(unlearned) if unlearned is not None else float("nan")
            reference = {role: values | {"sparsity": sparsity(refs[role][0])} for role, values in reference.items()}
        if x.n_models > 1:
            figures, yardsticks = population(x, art, unlearned, splits, self.on_epoch) if status == "ok" else \
                ({name: float("nan") for name in population_metric_names(task.utility_metrics, task.low_fpr)}, {})
            metrics |= figures
            # The same KLoM for the original (vs the oracles) and for retrains (vs retrains), beside the method's.
            reference = {role: values | yardsticks.get(role, {}) for role, values in reference.items()}
        # RTE in wall and CPU seconds; the oracle's as recorded when it was trained (docs/results.md, "Run time...").
        metrics |= {"RTE_s": seconds.wall, "RTE_cpu_s": seconds.cpu}
        reference["original"] |= {"RTE_s": float("nan"), "RTE_cpu_s": float("nan")}
        if "oracle" in reference:
            reference["oracle"] |= {"RTE_s": art.oracle_time.wall, "RTE_cpu_s": art.oracle_time.cpu}
        if finish is not None:
            finish(metrics, reference["original"], reference.get("oracle", {}), seconds)
        row = make_row(
            task=task.kind, data=str(x.cfg.data.name),
            model=labels.get("model") or str(x.cfg.model._target_).rsplit(".", 1)[-1],
            forget=x.request.forget.description, method=x.method.name, method_params=x.method.params(),
            seed=x.seed, status=status, metrics=metrics, original=reference["original"],
            oracle=reference.get("oracle", {}), gap_metrics=x.builder.gap_metrics(task.gap_metrics), command=command,
            config=plain(x.cfg), run_dir=str(run_dir) if run_dir else None,
            timings=art.timings | ({"precompute_s": x.stage.precompute_seconds} if x.stage.precompute_seconds else {}),
            env=x.environment()) | self.row_fields | (
                {"trajectory": self.trajectory.record()} if self.trajectory is not None and self.trajectory.points else {})
        if run_dir is not None and x.runtime.is_main:
            self._write(x, Path(run_dir), unlearned, save_model)
        x.record(row, run_dir, loggers)
        return row, unlearned

    def _evaluate(self, x: "Experiment", stages: Stages, refs: dict, unlearned: nn.Module | None, status: str,
                  method_figures: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]], str]:
        """(θu's metrics, the references' metrics by role, the status): the task's metrics, the request's relative
        ones, the scenario's own, and the attack's, of θu and of each reference, each part shown as it starts."""
        art, splits, ev = self.art, self.splits, x.evaluator
        reference = {role: stages.run(f"the {role}", lambda m=model, k=key: ev.reference(m, k, art, splits))
                     for role, (model, key) in refs.items()}
        if unlearned is not None:
            metrics = stages.run(f"the unlearned model ({x.method.name})",
                                 lambda: ev.evaluate(unlearned, art.oracle, splits))
            if not all(np.isfinite(v) for v in metrics.values()):
                log.warning("method %s: the unlearned model's outputs are not finite (metrics %s); status diverged",
                              x.method.name, sorted(k for k, v in metrics.items() if not np.isfinite(v)))
                status = "diverged"
        else:
            metrics = {name: float("nan") for name in reference.get("oracle") or reference["original"]}
        metrics |= method_figures
        # Metrics of the request relative to the original and the oracle (RESTOR's recovery); none for most.
        relative = lambda m: x.builder.relative(m, reference["original"], reference.get("oracle", {}))  # noqa: E731
        metrics |= relative(metrics)
        reference = {role: values | relative(values) for role, values in reference.items()}
        if self.extra is not None:
            if unlearned is not None:
                metrics |= self.extra(unlearned, "unlearned")
            reference = {role: values | self.extra(refs[role][0], role) for role, values in reference.items()}
        if x.attack is not None:  # the same probe of θu, θo and θr, scored under its prefix (DESIGN.md, "Attacks")
            names = list(reference.get("oracle") or reference["original"])
            metrics |= stages.run(f"{x.attack.prefix} attack on the unlearned model", lambda: ev.attacked(
                unlearned if status == "ok" else None, None, art, splits, names, self.original))
            reference = {role: values | stages.run(f"{x.attack.prefix} attack on the {role}", lambda r=role: ev.attacked(
                refs[r][0], refs[r][1], art, splits, names, self.original)) for role, values in reference.items()}
        return metrics, reference, status

    def _write(self, x: "Experiment", run_dir: Path, unlearned: nn.Module | None, save_model: bool) -> None:
        """The forget set (so it can be reused with forget=from_file, or published), the model, the pictures."""
        from unlearn.pipeline.experiment import save_model as save

        forget = x.request.forget
        if self.trajectory is not None and self.trajectory.points:  # one line per checkpoint, for a person or a plot
            write_text_atomic(run_dir / "trajectory.jsonl",
                              "".join(json.dumps(point) + "\n" for point in self.trajectory.points))
        write_json_atomic(run_dir / "forget_indices.json", self.forget_record or {
            "indices": forget.indices.tolist(),
            "test_indices": None if forget.test_indices is None else forget.test_indices.tolist(),
            "description": forget.description})
        if unlearned is None:
            return
        if save_model:
            save(unlearned, run_dir, x.models.model_config)
        models = {"original": self.original, "retrain (oracle)": self.art.oracle, x.method.name: unlearned}
        if x.attack is not None and x.evaluator.last_attacked is not None:  # what the attack got out of θu
            models[f"{x.method.name} + {x.attack.prefix} attack"] = x.evaluator.last_attacked
        x.task.save_pictures(run_dir, {k: m for k, m in models.items() if m is not None}, x.runtime,
                             int(x.cfg.eval.seed))
