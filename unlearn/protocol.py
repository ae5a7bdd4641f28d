"""The comparison protocol's settings (docs/tuning.md): the trajectory (`method.eval_every`), the selection rule
(`method.select`) and the search space `python -m unlearn tune` draws from (`method.space`).

They live in the method's config node (conf/method_defaults/protocol.yaml, pulled in by every trained method)
because they are chosen per method, but no method's constructor takes them: `Method.pipeline_keys` names them, and
`unlearn.config.build` leaves them out of the constructor's arguments. Every value is checked here, before anything
trains, and a bad one is one ConfigError line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from unlearn.errors import ConfigError

#: the method-node keys the pipeline reads (Method.pipeline_keys)
PROTOCOL_KEYS = ("eval_every", "eval_unit", "eval_metrics", "eval_size", "select", "select_metric", "space")
UNITS = ("epoch", "step")
#: selection rules a run may use; the refused ones would report the number they were chosen on
SELECT = ("last", "best_val")
REFUSED_SELECT = {"best_forget": "the reported forget set", "best_reported": "the reported forget set",
                  "best_test": "the test split", "best_retain": "the reported request's retain set"}


@dataclass(frozen=True)
class Dimension:
    """One knob of a search space: a number in [low, high] (log-uniform where `log`, whole numbers where `integer`),
    or one of `choices`. Written in a method yaml as `space: {lr: {low: 1e-3, high: 1e-1, log: true}, epochs: {low: 2,
    high: 10, int: true}, stream: {choices: [forget, union]}}`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Any) -> "Dimension":
        """The dimension `spec` (a mapping) declares; ConfigError on an empty, inverted or malformed range."""
        where = f"method.space.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}={spec!r} must be {{low: ..., high: ...[, log: true][, int: true]}} or "
                              f"{{choices: [...]}}")
        unknown = set(spec) - {"low", "high", "log", "int", "choices"}
        if unknown:
            raise ConfigError(f"{where} has unknown fields {sorted(unknown)}; valid: low, high, log, int, choices")
        if "choices" in spec:
            choices = tuple(spec["choices"] or ())
            if not choices:
                raise ConfigError(f"{where}.choices is empty; give at least one value")
            return cls(name, choices=choices)
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
            raise ConfigError(f"{where} needs finite numbers low and high, got low={low!r}, high={high!r}")
        if not low < high:
            kind = "empty" if low == high else "inverted"
            raise ConfigError(f"{where}: the range [{low}, {high}] is {kind}; give low < high")
        log, integer = bool(spec.get("log", False)), bool(spec.get("int", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got low={low}")
        if integer and (int(low) != low or int(high) != high):
            raise ConfigError(f"{where}: an integer range needs whole bounds, got [{low}, {high}]")
        return cls(name, float(low), float(high), log, integer)

    def sweeper(self) -> str:
        """The dimension in the override grammar of Hydra's Optuna sweeper (hydra.sweeper.params)."""
        if self.choices:
            return "choice(" + ",".join(str(c) for c in self.choices) + ")"
        if self.integer:
            return f"{'tag(log, ' if self.log else ''}int(interval({int(self.low)}, {int(self.high)})){')' if self.log else ''}"
        return f"{'tag(log, ' if self.log else ''}interval({self.low!r}, {self.high!r}){')' if self.log else ''}"

    def describe(self) -> dict[str, Any]:
        """The dimension as recorded in a row's `tuned.space`."""
        if self.choices:
            return {"choices": list(self.choices)}
        bound = int if self.integer else float
        return {"low": bound(self.low), "high": bound(self.high), "log": self.log, "int": self.integer}


@dataclass(frozen=True)
class Protocol:
    """The protocol keys of one method node (see the module docstring), checked.

    eval_every: evaluate every K `eval_unit`s (epoch | step) during unlearning, or None (no trajectory);
    eval_metrics: the metrics the trajectory records (None: the task's gap metrics); eval_size: at most this many
    examples per split in a trajectory evaluation; select: "last" (the model the method ends with) or "best_val"
    (the checkpoint whose gap to the oracle on a validation request is smallest); select_metric: "avg_gap" or one
    of the recorded gap metrics; space: the search space (`Dimension` per knob)."""

    eval_every: int | None = None
    eval_unit: str = "epoch"
    eval_metrics: tuple[str, ...] | None = None
    eval_size: int = 256
    select: str = "last"
    select_metric: str = "avg_gap"
    space: tuple[Dimension, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, method: Mapping[str, Any]) -> "Protocol":
        """The protocol a (plain) method node gives; ConfigError on a bad value. A node without protocol keys (a
        method that is not trained, e.g. retrain) gives the defaults: no trajectory, the last model."""
        every = method.get("eval_every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(f"method.eval_every={every!r} must be a whole number >= 1 (or null: no trajectory)")
        unit = method.get("eval_unit", "epoch")
        if unit not in UNITS:
            raise ConfigError(f"method.eval_unit={unit!r} is not one of {UNITS}")
        size = method.get("eval_size", 256)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"method.eval_size={size!r} must be a whole number >= 1")
        select = method.get("select", "last")
        if select in REFUSED_SELECT:
            raise ConfigError(f"method.select={select} is refused: it would choose the checkpoint on "
                              f"{REFUSED_SELECT[select]}, the very data the row reports; use method.select=best_val")
        if select not in SELECT:
            raise ConfigError(f"method.select={select!r} is not one of {SELECT}")
        if select == "best_val" and every is None:
            raise ConfigError("method.select=best_val chooses among the trajectory's checkpoints: give "
                              "method.eval_every=K too")
        metrics = method.get("eval_metrics")
        if metrics is not None and (isinstance(metrics, str) or not metrics):
            raise ConfigError(f"method.eval_metrics={metrics!r} must be a non-empty list of metric names, or null")
        space = tuple(Dimension.parse(str(name), spec) for name, spec in (method.get("space") or {}).items())
        for dim in space:
            if dim.name in PROTOCOL_KEYS or dim.name not in method:
                raise ConfigError(f"method.space.{dim.name} names no knob of the method; its knobs: "
                                  f"{', '.join(k for k in method if k not in PROTOCOL_KEYS and not k.startswith('_'))}")
        return cls(every, unit, None if metrics is None else tuple(str(m) for m in metrics), size, select,
                   str(method.get("select_metric", "avg_gap")), space)

    def metrics(self, gap_metrics: Sequence[str]) -> tuple[str, ...]:
        """The metrics a trajectory point records (the task's gap metrics unless `eval_metrics` names others)."""
        return self.eval_metrics or tuple(gap_metrics)

    def check(self, method_name: str, traced: bool, gap_metrics: Sequence[str], epochs: int | None) -> None:
        """Refuse what the method and task cannot honour (before anything trains): a trajectory of a method whose
        loop cannot be looked into, a selection metric the trajectory does not record, `eval_every` epochs beyond
        the method's epochs (steps are checked once the forget set is known: `check_steps`)."""
        if self.eval_every is None:
            return
        if not traced:
            raise ConfigError(f"method {method_name!r} runs a loop of its own, which method.eval_every cannot look "
                              f"into; drop method.eval_every (and method.select)")
        if self.select == "best_val" and not gap_metrics:
            raise ConfigError("method.select=best_val chooses the checkpoint closest to a validation request's oracle, "
                              "and this task has none to measure a gap to (no one can retrain a pretrained model "
                              "without its knowledge: data=known_facts); use method.select=last")
        recorded = self.metrics(gap_metrics)
        if self.select_metric != "avg_gap" and self.select_metric not in recorded:
            raise ConfigError(f"method.select_metric={self.select_metric!r} is not a metric the trajectory records "
                              f"({', '.join(recorded)}); use avg_gap or one of them")
        if self.eval_unit == "epoch" and epochs is not None and self.eval_every > epochs:
            raise ConfigError(f"method.eval_every={self.eval_every} epochs is beyond the method's {epochs} epochs; "
                              f"use 1..{epochs}")

    def check_steps(self, steps: int) -> None:
        """Refuse `eval_every` steps beyond the `steps` the method will take."""
        if self.eval_every is not None and self.eval_unit == "step" and self.eval_every > steps:
            raise ConfigError(f"method.eval_every={self.eval_every} steps is beyond the method's {steps} steps; "
                              f"use 1..{steps}")


TUNING_REQUESTS = ("validation", "reported")


@dataclass(frozen=True)
class Tuning:
    """The `tuning` node of the run config, which `python -m unlearn tune` sets (docs/tuning.md).

    trial: the run is a tuning trial (the method on `request`, no reported row); request: "validation" (the
    validation request of the run's seed) or "reported" (oracle tuning on the reported request: the optimistic
    protocol papers use, labelled so); record: where the run's configuration came from (a mapping, or the path of
    the tune command's tuned.json), recorded in the row as `tuned`."""

    trial: bool = False
    request: str = "validation"
    record: Any = None

    @classmethod
    def of(cls, node: Any) -> "Tuning":
        values = dict(node or {})
        unknown = set(values) - {"trial", "request", "record"}
        if unknown:
            raise ConfigError(f"tuning has no setting {sorted(unknown)}; valid: trial, request, record")
        request = values.get("request", "validation")
        if request not in TUNING_REQUESTS:
            raise ConfigError(f"tuning.request={request!r} is not one of {TUNING_REQUESTS}")
        trial = values.get("trial", False)
        if not isinstance(trial, bool):
            raise ConfigError(f"tuning.trial={trial!r} must be true or false")
        record = values.get("record")
        if isinstance(record, str) and not Path(record).is_file():
            raise ConfigError(f"tuning.record={record!r} is not a file (the tuned.json a tune command wrote)")
        return cls(trial, request, record)

    def recorded(self, method: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The row's `tuned`: the record itself, read from its file where it is a path; with the run's `method`
        node, `overridden` lists the tuned values this run replaced (a row run with `method.lr=...` over tuned
        defaults does not claim the tuned lr)."""
        record = json.loads(Path(self.record).read_text()) if isinstance(self.record, str) else _plain(self.record)
        if method is not None:
            overridden = {k: method[k] for k, v in (record.get("best") or {}).items()
                          if k in method and not _same(method[k], v)}
            if overridden:
                record = {**record, "overridden": overridden}
        return record


def _same(a: Any, b: Any) -> bool:
    """Equal values, floats to 1e-9 relative (a value goes through YAML and JSON on its way)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def _plain(value: Any) -> Any:
    """A config node (or anything inside one) as plain Python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
