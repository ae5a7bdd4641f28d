"""What an attack sees (`AttackContext`) and the attack shape (DESIGN.md, "Attacks").

An attack is a robustness probe of a trained model: it returns an attacked copy, which the pipeline scores
with the task's own metrics under the attack's prefix (e.g. `relearn.UA`). The same attack, with the same
random draws, runs on the unlearned model, the original and the oracle, so the three attacked rows compare.
An attack sees the model a user would deploy: a LoRA-unlearned model with its adapters merged
(`unlearn.models.lora.deployed`), so relearning trains every weight, not the adapters alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.runtime import Runtime
from unlearn.tasks.base import Task


@dataclass
class AttackContext:
    task: Task
    forget: TensorData
    retain: TensorData
    runtime: Runtime
    generator: torch.Generator      # the attack's own seeded stream: the same draws for every attacked model
    original: Optional[nn.Module] = None  # θo (prompt attacks denoise images it generates); never modified
    eval_seed: int = 0              # the evaluation's seed (the noise generations are made from)


class Attack:
    """A probe θ → θ' of one model; `prefix` names its metrics. Never modifies the model it is given."""

    name: str = "attack"
    figure_names: tuple[str, ...] = ()  # what `figures` reports (NaN for a model that diverged)

    @property
    def prefix(self) -> str:
        return self.name

    def check(self, task: Task) -> None:
        """Raise ConfigError if this attack cannot probe `task`'s models (called before anything trains)."""

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        raise NotImplementedError

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        """Figures of the attack itself (e.g. its success rate and cost), reported beside the task's metrics of
        the attacked model under the same prefix. None by default."""
        return {}

    def cache_fields(self) -> dict[str, Any]:
        """What the attacked metrics of a fixed model depend on (part of their cache key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
