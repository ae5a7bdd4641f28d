"""What export and verify share: the weights a bundle stores for a model, the model rebuilt from them, the harness's
own evaluation of the rebuilt models, and the comparison of its metrics with a row's.

Export runs exactly this on the tensors it is about to write, and verify on the tensors it read, so a bundle that
exports is one that verifies (on the same torch build, threads and device: with the same numbers)."""
from __future__ import annotations

import copy
import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unlearn.codehash import code_digest
from unlearn.eval.gap import average_gap, gaps
from unlearn.models.pruning import apply_masks, sparsity
from unlearn.pipeline.evaluation import Evaluator
from unlearn.report.tables import SECONDS, unit
from unlearn.reproduce.compare import ATOL, K, RTOL, setting, tolerance

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Experiment

ROLES = ("unlearned", "original", "oracle")
_MASK = re.compile(r"(.+)\.parametrizations\.weight\.0\.mask")
STATUSES = ("match", "drift")


class WeightsMismatch(ValueError):
    """Tensors that do not fit the model a config builds (missing or unexpected names, other shapes)."""


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, as the cache stores a model: a pruned conv keeps its
    `<conv>.parametrizations.weight.original` and its `<conv>.parametrizations.weight.0.mask` (weight = original ×
    mask), since an attack that reads the weights (quantization's per-tensor scale) sees the masked-out values."""
    return {name: t.detach().to("cpu").clone() for name, t in model.state_dict().items()}


def changed(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of `state` that differ from `base` (value, shape or dtype) or that `base` lacks: what a bundle
    stores of a model made from a published base it does not hold."""
    return {name: t for name, t in state.items()
            if name not in base or base[name].shape != t.shape or base[name].dtype != t.dtype
            or not torch.equal(base[name], t)}


def rebuild(x: "Experiment", tensors: dict[str, torch.Tensor], base: nn.Module | None = None) -> nn.Module:
    """The model a run's config builds (`base` copied where given: a diff's published base), given `tensors`. Every
    name must fit: WeightsMismatch with the first line of torch's complaint otherwise."""
    if base is not None:
        model, state = copy.deepcopy(base), state_of(base)
        unknown = sorted(set(tensors) - set(state))
        if unknown:
            raise WeightsMismatch(f"names the base model lacks: {unknown[:3]}")
        state |= tensors
    else:
        model, state = x.models.new_model(x.seed, "load"), tensors
        masks = {match.group(1): t for name, t in tensors.items() if (match := _MASK.fullmatch(name))}
        if masks:  # a pruned model: its masks first, as ModelStore.model_from_state rebuilds one from the cache
            try:
                apply_masks(model, masks)
            except (KeyError, AttributeError, RuntimeError) as exc:
                raise WeightsMismatch(f"pruning masks that do not fit: {type(exc).__name__}: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise WeightsMismatch(" ".join(lines[:2])[:300]) from None
    return model


def evaluation_code(x: "Experiment") -> str:
    """The digest of the evaluation code (what Evaluator.reference keys its metrics by): a bundle records it, so a
    drift at verify can be told from a change of a metric's code."""
    return code_digest(Evaluator.evaluate, x.task.evaluate, x.task.compare_to_oracle, x.request.builder.evaluate)


def reevaluate(x: "Experiment", models: dict[str, nn.Module | None], original_key: str,
               oracle_key: str | None = None) -> dict[str, dict[str, float]]:
    """{role: metrics} of the unlearned model, the original and the oracle (`models`; the oracle may be None) by
    the harness's own evaluation as the step computes it: the task's metrics, the difference to the oracle, the
    request's and the judge's (the run's original) metrics, then the request's relative metrics, the run's attack
    on each model (`<attack>.<metric>`, seeded as in the run), and the sparsity of a pruned run. The forget set is
    the experiment's current request; `original_key`/`oracle_key` are the models' identities."""
    from unlearn.pipeline.experiment import Artifacts
    from unlearn.runtime import Clock

    splits, ev = x.splits(), x.evaluator
    ev.judge = models["original"], original_key
    oracle = models.get("oracle")
    found = {role: ev.evaluate(model, oracle, splits) for role, model in models.items() if model is not None}
    original_values, oracle_values = found["original"], found.get("oracle", {})
    found = {role: values | x.builder.relative(values, original_values, oracle_values)
             for role, values in found.items()}
    if x.attack is not None:  # the same probe of each model, as the step runs it (no cache: nothing is kept)
        art = Artifacts(x.seed, models["original"], original_key, oracle, oracle_key,
                        Clock(float("nan"), float("nan")), {})
        names = list(found.get("oracle") or found["original"])
        found = {role: values | ev.attacked(models[role], None, art, splits, names, models["original"])
                 for role, values in found.items()}
    if x.pruner is not None:
        found = {role: values | {"sparsity": sparsity(models[role])} for role, values in found.items()}
    return found


def recorded_values(row: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{role: metrics} as the row records them (unlearned: `metrics`; original, oracle: `reference`)."""
    reference = row.get("reference") or {}
    return {"unlearned": dict(row.get("metrics") or {}), "original": dict(reference.get("original") or {}),
            "oracle": dict(reference.get("oracle") or {})}


def spreads(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[float]]:
    """{(setting, role, metric): values}: each metric's values over the rows of one setting (they differ only in
    their seed), for the tolerance of a comparison that cannot be exact."""
    found: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        for role, values in recorded_values(row).items():
            for metric, value in values.items():
                found.setdefault((setting(row), role, metric), []).append(_number(value))
    return found


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def compare_row(label: str, row: dict[str, Any], found: dict[str, dict[str, float]], exact: bool,
                spread: dict[tuple[str, str, str], list[float]], gap_metrics: tuple[str, ...], k: float = K,
                atol: float = ATOL, rtol: float = RTOL) -> tuple[list[dict[str, Any]], list[str]]:
    """(one record per metric of `row` that was re-evaluated: run, model, metric, bundled, re-evaluated, diff,
    tolerance, status (match | drift); the row's metrics that were not re-evaluated or are wall-clock times (unit
    seconds), as role.metric). `exact`:
    every value must be equal (NaN equals NaN); else within `tolerance` (k × the seeds' std, atol, rtol × |value|).
    `avg_gap` is compared too where every gap metric was re-evaluated."""
    records, skipped = [], []
    recorded = recorded_values(row)
    unlearned, oracle = found.get("unlearned", {}), found.get("oracle", {})
    gap = gaps(unlearned, oracle, gap_metrics)
    if gap_metrics and len(gap) == len([m for m in gap_metrics if m in recorded["oracle"]]) and "avg_gap" in row:
        found = found | {"unlearned": unlearned | {"avg_gap": average_gap(gap)}}
        recorded = recorded | {"unlearned": recorded["unlearned"] | {"avg_gap": row["avg_gap"]}}
    for role in ROLES:
        for metric, value in recorded[role].items():
            if metric not in found.get(role, {}) or unit(metric, row.get("task")) == SECONDS:  # wall-clock: never equal
                skipped.append(f"{role}.{metric}")
                continue
            old, new = _number(value), _number(found[role][metric])
            same = old == new or (math.isnan(old) and math.isnan(new))
            diff = 0.0 if same else abs(old - new)
            tol = 0.0 if exact else tolerance(spread.get((setting(row), role, metric), [old]), old, k, atol, rtol)
            ok = same or (not exact and diff <= tol)
            records.append(dict(run=label, model=role, metric=metric, bundled=old, reevaluated=new, diff=diff,
                                tolerance=tol, status="match" if ok else "drift"))
    return records, skipped
