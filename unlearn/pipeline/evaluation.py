"""Evaluation of one model: the task's metrics, how it differs from the oracle, the request's own metrics, and the
attack's metrics. What is computed from a fixed model (the original, the oracle) is cached under that model's
identity, so it is computed once whatever runs after it."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from torch import nn

from unlearn.attacks.base import Attack, AttackContext
from unlearn.cache import Cache, content_key
from unlearn.codehash import code_digest
from unlearn.config import plain
from unlearn.errors import DivergedError
from unlearn.models.lora import deployed
from unlearn.pipeline.request import Request
from unlearn.pipeline.store import seed_stage
from unlearn.runtime import Runtime
from unlearn.tasks.base import Splits, Task

if TYPE_CHECKING:
    from unlearn.pipeline.experiment import Artifacts

log = logging.getLogger("unlearn")


class Evaluator:
    """Metrics of models of one experiment (its task, request, attack and evaluation seed)."""

    def __init__(self, cfg: DictConfig, task: Task, request: Request, attack: Attack | None, runtime: Runtime,
                 cache: Cache):
        self.cfg, self.task, self.request, self.attack, self.runtime, self.cache = cfg, task, request, attack, runtime, cache
        self.seed, self.eval_seed = int(cfg.seed), int(cfg.eval.seed)
        # (model, identity) of the fixed model that judges others (`Task.judged_by`: an LM's answer fluency under
        # the run's original); set by the step.
        self.judge: tuple[nn.Module, str] | None = None
        # The unlearned model as the attack left it (the last `attacked` of a model without identity), for pictures.
        self.last_attacked: nn.Module | None = None

    def evaluate(self, model: nn.Module, oracle: nn.Module | None, splits: Splits) -> dict[str, float]:
        """The task's metrics of one model, how it differs from the oracle (none without one), and the request's."""
        seed_stage(self.seed, "evaluate")
        metrics = self.task.evaluate(model, splits, self.runtime, self.eval_seed)
        return (metrics | (self.task.compare_to_oracle(model, oracle, splits, self.runtime) if oracle is not None else {})
                | self.request.builder.evaluate(self.task, model, self.request.data()[0], self.request.forget,
                                                self.runtime)
                | (self.task.judged_by(model, self.judge[0], splits, self.runtime) if self.judge else {}))

    def _judge_key(self) -> str | None:
        return None if self.judge is None else self.judge[1]

    def reference(self, model: nn.Module, model_key: str, art: "Artifacts", splits: Splits) -> dict[str, float]:
        """Metrics of a fixed model (the original, the oracle): deterministic, so cached by its identity."""
        key = content_key("eval", code=code_digest(Evaluator.evaluate, self.task.evaluate, self.task.compare_to_oracle,
                                                    self.request.builder.evaluate), model=model_key,
                          oracle=art.oracle_key, forget=self.request.forget_key, judge=self._judge_key(),
                          task=plain(self.cfg.data.task), low_fpr=self.task.low_fpr, eval_seed=self.eval_seed)
        metrics, _ = self.cache.get_or_compute(key, lambda: self.evaluate(model, art.oracle, splits), "reference metrics")
        return metrics

    def attacked(self, model: nn.Module | None, model_key: str | None, art: "Artifacts", splits: Splits,
                 names: list[str], original: nn.Module | None = None) -> dict[str, float]:
        """The attack's metrics of one model, `<prefix>.<metric>`; NaN for a diverged model or attack. The attack
        sees the deployed model (LoRA merged). For a fixed model (`model_key`, its identity) they are cached.
        `original`: the run's θo that prompt attacks generate from (default: `art.original`)."""
        prefix = self.attack.prefix
        names = names if self.attack.scores_model else []  # a probe that only reads the model reports its figures
        failed = {f"{prefix}.{name}": float("nan") for name in [*names, *self.attack.figure_names]}
        if model_key is None:
            self.last_attacked = None
        if model is None:
            return failed

        def compute() -> dict[str, float]:
            seed_stage(art.model_seed, "attack")
            ctx = AttackContext(self.task, splits.forget, splits.retain, self.runtime,
                                self.runtime.generator(art.model_seed, "attack"),
                                original=art.original if original is None else original, eval_seed=self.eval_seed)
            try:
                attacked = self.attack.attack(deployed(model), ctx)
                if model_key is None:
                    self.last_attacked = attacked
            except DivergedError as exc:
                log.warning("attack %s diverged: %s", prefix, exc)
                return failed
            metrics = ((self.evaluate(attacked, art.oracle, splits) if self.attack.scores_model else {})
                       | self.attack.figures(model, attacked, ctx))
            return {f"{prefix}.{name}": value for name, value in metrics.items()}

        if model_key is None:
            return compute()
        key = content_key("attack-eval", code=code_digest(type(self.attack), Evaluator.attacked, Evaluator.evaluate,
                                                          self.task.evaluate, self.task.compare_to_oracle,
                                                          self.task.loss, self.request.builder.evaluate),
                          model=model_key, oracle=art.oracle_key, forget=self.request.forget_key, seed=art.model_seed,
                          judge=self._judge_key(), low_fpr=self.task.low_fpr,
                          attack=[type(self.attack).__qualname__, self.attack.cache_fields()],
                          task=plain(self.cfg.data.task), eval_seed=self.eval_seed)
        return self.cache.get_or_compute(key, compute, f"{prefix} attack on a reference model")[0]
