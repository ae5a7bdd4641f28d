"""One experiment: the stages composed from a config. Everything that can be refused is refused here, before
anything is loaded or trained; `prepare` gets a seed's original, forget set and oracle; `run` sends the request
through the one step (`step.py`).

Nothing here is modality-specific: the data config names its Task, and everything else goes through the Task,
Method and ForgetBuilder interfaces. Expensive stages are cached by content (cache.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from unlearn.attacks.base import Attack
from unlearn.attribution import Trak
from unlearn.cache import Cache
from unlearn.config import build, check_node, plain, target_of
from unlearn.data.forget import ForgetBuilder
from unlearn.data.tensordata import DataBundle
from unlearn.errors import ConfigError
from unlearn.knobs import check_knobs
from unlearn.methods.base import Method
from unlearn.models.pruning import Pruner, plain_state_dict
from unlearn.pipeline.beside import Beside
from unlearn.pipeline.evaluation import Evaluator
from unlearn.pipeline.method_stage import MethodStage
from unlearn.pipeline.populations import Stack, member_seeds
from unlearn.pipeline.request import Request
from unlearn.pipeline.selection import Selection
from unlearn.pipeline.trajectory import make_trajectory
from unlearn.protocol import Protocol, Tuning
from unlearn.pipeline.step import Step
from unlearn.pipeline.store import EpochCallback, ModelStore, find_published
from unlearn.report.loggers import Logger, record_row
from unlearn.report.row import environment, summary_table
from unlearn.runtime import Clock, Runtime, auto_threads
from unlearn.tasks.base import Splits, Task
from unlearn.training import OptimConfig

log = logging.getLogger("unlearn")


@dataclass
class Artifacts:
    """One original/oracle pair for a forget set, from cache or freshly trained. `original` is the model the method
    starts from (a stream's later steps: the model the step before made), `original_key` its identity."""

    model_seed: int
    original: nn.Module
    original_key: str
    oracle: nn.Module | None
    oracle_key: str | None
    oracle_time: Clock  # the oracle's training time (wall and CPU), as recorded when it was trained
    timings: dict[str, Any]


class Experiment:
    """The stages of one run, from a composed config (`python run.py ...` or Hydra's compose API): `request` (data
    and forget set), `models` (originals and oracles), `stack` and `beside` (how they train), `stage` (the method),
    `evaluator` (metrics and attacks)."""

    def __init__(self, cfg: DictConfig, cache: Cache | None = None):
        self.cfg = cfg
        self.seed = int(cfg.seed)
        self.runtime = Runtime.from_config(cfg.device, cfg.precision, cfg.channels_last, cfg.get("threads"))
        self.cache = cache or Cache(cfg.cache_dir, enabled=bool(cfg.use_cache))
        # Everything that can be refused is checked and built first, so bad input fails before any training:
        # every knob of every node against its declared range (unlearn/knobs.py), then the objects themselves.
        check_node(cfg)
        # Before the task, whose tokenizer may be the published model's: a path that is nowhere is named first.
        published = find_published(cfg)
        self.task: Task = build(cfg.data.task)
        self.builder: ForgetBuilder = build(cfg.forget)
        self.method: Method = build(cfg.method)
        self.method.check(self.task)
        # The comparison protocol (trajectory, selection, search space: docs/tuning.md), read from the method's node.
        self.protocol = Protocol.of(plain(cfg.method))
        self.protocol.check(self.method.name, self.method.traced, self.task.gap_metrics, getattr(self.method, "epochs", None))
        self.tuning = Tuning.of(cfg.get("tuning"))
        self.task.check_forget(self.builder)
        check_knobs(OptimConfig, plain(cfg.data.train), "data.train")
        self.recipe = OptimConfig(**plain(cfg.data.train))
        self.model_config = plain(cfg.model)
        self.method.check_model(self.model_config)
        self.pruner: Pruner | None = build(cfg.prune) if cfg.get("prune") is not None else None
        self.n_models = int(cfg.eval.oracles)
        self.attributor: Trak = build(cfg.attribution)
        self.attack: Attack | None = build(cfg.attack) if cfg.get("attack") is not None else None
        if self.attack is not None:
            self.attack.check(self.task)
        self.request = Request(cfg, self.task, self.builder, self.runtime, self.cache)
        self.models = ModelStore(cfg, self.task, self.method, self.runtime, self.cache, self.recipe, self.pruner,
                                 self.request, published)
        self.stack = self.models.stack = Stack(self.models)
        self.beside = self.models.beside = Beside(self.models)
        self.stage = MethodStage(self)
        self.selection = Selection(self)
        self.evaluator = Evaluator(cfg, self.task, self.request, self.attack, self.runtime, self.cache)
        self._check_settings()
        # Names a config gives (a model's source, LoRA's target modules, a method's parameters) are resolved now.
        source_check = getattr(target_of(cfg.model), "check_source", None)
        if source_check is not None:
            source_check(self.model_config)
        self.method.check_weights(self.models.probe_model)
        self.cache.check_writable()  # after every other refusal: it creates the folder
        if cfg.get("threads", "auto") == "auto":  # after every refusal: the estimate builds the data
            self.runtime.use_threads(auto_threads(self.runtime.device, lambda: self.models.training_flop()[0]))

    def _check_settings(self) -> None:
        cfg, published = self.cfg, self.models.checkpoints
        if self.n_models < 1:
            raise ConfigError(f"eval.oracles must be >= 1 (1 = the run's own oracle only), got {self.n_models}")
        if cfg.eval.get("stacked", "auto") not in ("auto", True, False):
            raise ConfigError(f"eval.stacked={cfg.eval.stacked!r} must be auto, true or false")
        if self.n_models == 2:
            raise ConfigError("eval.oracles=2 is too few for a population: the ε score's bins run up to "
                              "ceil(ln(N − 1)), 0 for N = 2; use eval.oracles=1 (the run's own oracle) or >= 3")
        if self.n_models > 1 and not self.task.has_example_statistics:
            raise ConfigError(f"eval.oracles={self.n_models} needs a per-example statistic, which the "
                              f"{self.task.kind} task does not define; use eval.oracles=1")
        if "original" in published and self.models.builds_own_original():
            raise ConfigError(f"method {self.method.name!r} trains its own original (exact unlearning), so it cannot "
                              f"start from a published one; drop original.path")
        if cfg.get("parallel_training", "auto") not in ("auto", True, False):
            raise ConfigError(f"parallel_training={cfg.parallel_training!r} must be auto, true or false")
        rmia, gamma, a = cfg.eval.get("rmia", "auto"), cfg.eval.get("rmia_gamma", 2.0), cfg.eval.get("rmia_offline_a", 0.3)
        if rmia not in ("auto", True):
            raise ConfigError(f"eval.rmia={rmia!r} must be auto or true")
        if rmia is True and self.n_models < 2:
            raise ConfigError(f"eval.rmia=true needs reference models: RMIA scores the run's models against the other "
                              f"members' oracles, so it needs eval.oracles >= 2 (got {self.n_models})")
        if not float(gamma) > 0 or not 0 <= float(a) <= 1:
            raise ConfigError(f"RMIA needs eval.rmia_gamma > 0 and eval.rmia_offline_a in [0, 1]; got {gamma} and {a}")
        if self.protocol.select == "best_val" or (self.tuning.trial and self.tuning.request == "validation"):
            what = "tuning trials" if self.tuning.trial else "method.select=best_val"
            if self.n_models > 1:
                raise ConfigError(f"{what} and eval.oracles={self.n_models} do not go together: a population's members "
                                  f"are trained for the reported request only; use eval.oracles=1")
            if "oracle" in published:
                raise ConfigError(f"{what} needs the oracle of a validation request, and oracle.path is the reported "
                                  f"request's only; drop oracle.path")
            if self.models.builds_own_original():
                raise ConfigError(f"{what} runs the method on a validation request, which method "
                                  f"{self.method.name!r} (it trains its own original) cannot; use method.select=last")
            if not self.builder.draws_validation:
                raise self.builder.no_validation()
        if self.n_models > 1 and published:
            given = " and ".join(f"{role}.path" for role in published)
            raise ConfigError(f"eval.oracles={self.n_models} compares populations of models trained from different "
                              f"seeds, but {given} fixes every member to one published model, so KLoM, LiRA and the "
                              f"ε score would compare copies of one model; use eval.oracles=1, or drop {given} to "
                              f"train the population")

    # ---- what the stages share ----------------------------------------------------------------------
    def data(self) -> tuple[DataBundle, str]:
        return self.request.data()

    def splits(self) -> Splits:
        return self.request.splits()

    def member_seeds(self, n: int, namespace: str = "member") -> list[int]:
        return member_seeds(self.seed, n, namespace)

    def environment(self) -> dict[str, Any]:
        return environment(str(self.runtime.device), getattr(self.method, "batch_size", None))

    # ---- a seed's original, forget set and oracle ------------------------------------------------------
    def prepare(self, on_epoch: EpochCallback | None = None, model_seed: int | None = None,
                with_oracle: bool = True) -> Artifacts:
        """The original and oracle for `model_seed` (default: the run's seed) on the run's forget set. Where the
        forget set does not depend on the original and neither model is cached, the original trains in a second
        process while this one trains the oracle, on a CPU with threads to share (`parallel_training`).
        `with_oracle=False`: the original and the forget set only (a tuning trial, which needs another request's
        oracle)."""
        model_seed = self.seed if model_seed is None else model_seed
        timings: dict[str, Any] = {}
        t0 = time.perf_counter()
        self.data()
        timings["data_s"] = time.perf_counter() - t0
        self.models.check_published()

        if not self.builder.needs_original:  # chosen first: it does not depend on the original
            self._timed_forget(None, None, timings)
        if not with_oracle:
            original, original_key, _, cached = self.models.original_model(model_seed, on_epoch)
            timings.update(original_s=time.perf_counter() - t0, original_cached=cached)
            if self.builder.needs_original:  # the validation request is drawn beside it (worst-case)
                self._timed_forget(original, original_key, timings)
            nan = float("nan")
            return Artifacts(model_seed, original, original_key, None, None, Clock(nan, nan), timings)
        with self.beside.original_beside_oracle(model_seed) as beside:
            if beside:
                oracle, oracle_key, payload = self._timed_oracle(model_seed, None, timings, on_epoch)
            t0 = time.perf_counter()
            original, original_key, original_payload, cached = self.models.original_model(model_seed, on_epoch)
            timings.update(original_s=time.perf_counter() - t0, original_cached=cached)
        if beside:
            timings.update(original_s=original_payload["train_seconds"], beside_oracle=True)
        else:
            if self.builder.needs_original:
                self._timed_forget(original, original_key, timings)
            oracle, oracle_key, payload = self._timed_oracle(model_seed, original_payload.get("masks"), timings, on_epoch)
        return Artifacts(model_seed, original, original_key, oracle, oracle_key, Clock.of(payload, "train_"), timings)

    def _timed_forget(self, original: nn.Module | None, original_key: str | None, timings: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        _, _, cached = self.request.forget_set(original, original_key)
        timings.update(forget_s=time.perf_counter() - t0, forget_cached=cached)

    def _timed_oracle(self, model_seed: int, masks: dict | None, timings: dict[str, Any], on_epoch) -> tuple:
        """(oracle, its identity, its payload), its stage time added to `timings`."""
        t0 = time.perf_counter()
        oracle, key, payload, cached = self.models.oracle_model(model_seed, masks, on_epoch)
        timings.update(oracle_s=time.perf_counter() - t0, oracle_cached=cached)
        return oracle, key, payload

    # ---- the run ------------------------------------------------------------------------------------
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
        """The single scenario: one request, one step, one row (printed as the end-of-run table)."""
        loggers = loggers or []
        self.data()  # validates the forget settings against the data before anything is logged or trained
        if self.protocol.select == "best_val" or (self.tuning.trial and self.tuning.request == "validation"):
            self.selection.check()  # a validation request that cannot be drawn: one line, before anything trains
        for lg in loggers:
            lg.start(run_dir, plain(self.cfg))
        on_epoch = lambda stage, epoch, loss: [lg.log_epoch(stage, epoch, loss) for lg in loggers]  # noqa: E731
        if self.tuning.trial:
            return self.trial(run_dir, loggers, labels or {}, command, on_epoch)
        art = self.prepare(on_epoch)
        splits = self.splits()
        log.info("forget set: %d examples (%s); retain: %d; test: %d", len(splits.forget),
                 self.request.forget.description.get("builder"), len(splits.retain), len(splits.test))
        self.check_trajectory(splits)
        fields: dict[str, Any] = {"tuned": self.tuning.recorded(plain(self.cfg.method))} if self.tuning.record is not None else {}
        stop_at = None
        if self.protocol.select == "best_val":  # chosen on the validation request before the reported run starts
            fields["selection"] = self.selection.choose(art, on_epoch)
            stop_at = fields["selection"]["position"]
        trajectory = make_trajectory(self, art, splits, self.request.forget_key, stop_at=stop_at)
        step = Step(art, splits, art.original, art.original_key, on_epoch, row_fields=fields, trajectory=trajectory)
        row, _ = step.run(self, run_dir=run_dir, loggers=loggers, labels=labels or {}, command=command,
                          save_model=bool(self.cfg.save_model))
        if self.runtime.is_main:
            print("\n" + summary_table(row) + "\n", flush=True)
        return row

    def check_trajectory(self, splits: Splits) -> None:
        """Refuse `method.eval_every` steps beyond the steps the method takes on `splits` (before it starts)."""
        if self.protocol.eval_every is not None and self.protocol.eval_unit == "step":
            self.protocol.check_steps(self.method.steps(splits.forget, splits.retain))

    def trial(self, run_dir: Path | None, loggers: list[Logger], labels: dict, command: str, on_epoch) -> dict[str, Any]:
        """A trial of `python -m unlearn tune` (tuning.trial=true): the method on the validation request of this seed
        (tuning.request=validation), or on the reported request itself (tuning.request=reported: oracle tuning, the
        optimistic protocol, labelled so), against that request's oracle; with method.select=best_val, the best
        checkpoint on that same request. One row (`tuning.trial` in it), whose Avg. Gap the sweeper minimises."""
        if self.tuning.request == "validation":
            art = self.prepare(on_epoch, with_oracle=False)
            art, splits, forget, key = self.selection.artifacts(art, on_epoch)
            self.request.set_forget(forget, key)  # the row, its references and the method's artifacts are V's
        else:
            art = self.prepare(on_epoch)
            splits = self.splits()
        self.check_trajectory(splits)
        trajectory = make_trajectory(self, art, splits, self.request.forget_key,
                                     keep_best=self.protocol.select == "best_val")
        step = Step(art, splits, art.original, art.original_key, on_epoch, trajectory=trajectory,
                    row_fields={"trial": {"request": self.tuning.request, "select": self.protocol.select}})
        row, _ = step.run(self, run_dir=run_dir, loggers=loggers, labels=labels, command=command, save_model=False)
        return row


def save_model(model: nn.Module, run_dir: Path, model_config: dict) -> None:
    """HF models in their own format; classifiers as a plain state_dict (pruning masks folded in) with the
    config that rebuilds them."""
    import torch

    if hasattr(model, "save_pretrained"):
        model.save_pretrained(run_dir / "model")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".model.pt.tmp"
    torch.save({"state_dict": plain_state_dict(model), "config": model_config}, tmp)
    tmp.replace(run_dir / "model.pt")
