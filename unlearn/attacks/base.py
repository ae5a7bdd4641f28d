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
from unlearn.errors import ConfigError
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
    #: False for a probe that only reads the model (logit lens, linear probe, in-context examples): `attack` returns
    #: the model itself, its findings are its `figures`, and the task's metrics are not computed again.
    scores_model: bool = True

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


def weight_matrices(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights that weight-only quantization and magnitude pruning transform, as bitsandbytes, GPTQ and the
    pruning literature do: every `nn.Linear` and `nn.Conv1d/2d/3d` weight (and transformers' `Conv1D`, GPT-2's
    linear layers), except a language model's output embedding (the LM head, which those tools leave in full
    precision). Embeddings, norms and biases stay as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out, seen = [], set()
    for name, module in model.named_modules():
        if module is head or not (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
                                  or type(module).__name__ == "Conv1D"):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.is_floating_point() and id(weight) not in seen:
            seen.add(id(weight))   # a weight shared by two modules is transformed once
            out.append((f"{name}.weight" if name else "weight", weight))
    return out


class HiddenStateAttack(Attack):
    """An attack that reads a language model's residual stream through its task's `answer_states` (the probing
    attacks). `layer` (1-based, a decoder block's output; None: every block) is checked against `depth`, the
    model's number of blocks where the config gives it (the yaml reads `model.num_layers`), before anything trains,
    and against the model itself when it is probed."""

    def _init_layer(self, layer: int | None, depth: int | None) -> None:
        self.layer = None if layer is None else int(layer)
        self._depth = None if depth is None else int(depth)
        if self.layer is not None and self._depth is not None and self.layer > self._depth:
            raise ConfigError(f"attack.layer={self.layer} is beyond the model's depth: it has {self._depth} "
                              f"decoder layers (1..{self._depth}; null: every layer)")

    def check(self, task: Task) -> None:
        if not hasattr(task, "answer_states"):
            raise ConfigError(f"attack={self.name} reads a language model's hidden states, which the {task.kind} "
                              f"task does not have; use it with a question-answer LM data set (e.g. data=facts or data=tofu)")

    def layers(self, model: nn.Module) -> list[int]:
        """The 1-based decoder layers probed on `model` (ConfigError if `layer` is beyond its depth)."""
        from unlearn.tasks.answers import decoder_layers

        blocks = decoder_layers(model)
        if blocks is None:
            raise ConfigError(f"attack={self.name}: cannot find the decoder layers of {type(model).__name__}")
        if self.layer is not None and self.layer > len(blocks):
            raise ConfigError(f"attack.layer={self.layer} is beyond the model's depth: it has {len(blocks)} "
                              f"decoder layers (1..{len(blocks)}; null: every layer)")
        return list(range(1, len(blocks) + 1)) if self.layer is None else [self.layer]
