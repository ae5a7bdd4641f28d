"""What an attack sees (`AttackContext`) and the attack shape (DESIGN.md, "Attacks").

An attack is a robustness probe of a trained model: it returns an attacked copy, which the pipeline scores
with the task's own metrics under the attack's prefix (e.g. `relearn.UA`). The same attack, with the same
random draws, runs on the unlearned model, the original and the oracle, so the three attacked rows compare.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


class Attack:
    """A probe θ → θ' of one model; `prefix` names its metrics. Never modifies the model it is given."""

    name: str = "attack"

    @property
    def prefix(self) -> str:
        return self.name

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        raise NotImplementedError

    def cache_fields(self) -> dict[str, Any]:
        """What the attacked metrics of a fixed model depend on (part of their cache key)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
