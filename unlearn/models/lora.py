"""LoRA for unlearning large models (`model.lora.r=<rank>`), through peft, and gradient checkpointing.

With a rank set, every gradient method trains low-rank adapters on a copy of the original instead of all its
weights; the unlearned model is the peft model, saved with `save_pretrained` (the adapter alone). Gradient
checkpointing (`model.gradient_checkpointing=true`) trades compute for activation memory. Together they hold a
known trap: with reentrant checkpointing and frozen embeddings no input of a checkpointed block requires a
gradient, so the adapters inside silently receive none; `enable_input_require_grads` makes the embedding
output require one.

What is measured or attacked is the model a user would deploy (`deployed`): the adapters merged into the
weights, so no score depends on how the model was parametrised while it was unlearned.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from unlearn.errors import ConfigError
from unlearn.knobs import POSITIVE, Range


@dataclass
class LoraSettings:
    """peft's LoraConfig for causal LMs: rank `r` (None: no LoRA, every weight trains), scaling `alpha`,
    `dropout`, and the modules that get adapters (`all-linear`: every linear layer but the output head)."""

    r: int | None = None
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = "all-linear"

    knobs = {"r": Range(1, integer=True, optional=True), "alpha": POSITIVE, "dropout": Range(0, 1, high_open=True)}

    def __post_init__(self):
        if self.r is not None and (int(self.r) != self.r or self.r < 1):
            raise ConfigError(f"model.lora.r must be a positive integer rank (or null for no LoRA), got {self.r}")

    @classmethod
    def from_config(cls, node: Any) -> "LoraSettings":
        """From a model config's `lora` entry (a plain dict, its `_target_` dropped; None or absent: no LoRA)."""
        if node is None or isinstance(node, LoraSettings):
            return node or cls()
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(node).items()
                      if not str(k).startswith("_")})

    @property
    def enabled(self) -> bool:
        return self.r is not None

    def check_targets(self, model: nn.Module) -> None:
        """ConfigError unless every name of `target_modules` matches a module of `model` under peft's rules (a
        list entry matches a module name or its last dotted parts; a string other than "all-linear" is a regular
        expression the whole name must match). `model` may be weightless (meta device)."""
        names = [name for name, _ in model.named_modules() if name]
        targets = self.target_modules
        if isinstance(targets, str):
            if targets == "all-linear" or any(re.fullmatch(targets, n) for n in names):
                return
            missing = [targets]
        else:
            missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(f"model.lora.target_modules: {', '.join(map(repr, missing))} names no module of "
                              f"{type(model).__name__}; its linear layers are {', '.join(leaves)} (or all-linear)")

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` with trainable LoRA adapters and every original weight frozen (a peft model)."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=int(self.r), lora_alpha=float(self.alpha), lora_dropout=float(self.dropout),
                            target_modules=self.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, config)


def prepare_for_training(model: nn.Module, lora: LoraSettings, gradient_checkpointing: bool) -> nn.Module:
    """The model a gradient method optimises: wrapped in LoRA adapters if `lora` is enabled, with gradient
    checkpointing on if asked (and the embedding output requiring gradients, so adapters under reentrant
    checkpointing train)."""
    if gradient_checkpointing:
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ConfigError(f"model.gradient_checkpointing=true needs a transformers model; "
                              f"{type(model).__name__} has no gradient checkpointing")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if not lora.enabled:
        return model
    if gradient_checkpointing:
        model.enable_input_require_grads()
    if is_peft(model):  # a stream's later step: keep training the same adapter, so it loads onto the base model
        return model
    return lora.wrap(model)


def is_peft(model: nn.Module) -> bool:
    """Whether `model` is a peft model (base weights plus adapters)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency; a model cannot be one without it
        return False
    return isinstance(model, PeftModel)


def deployed(model: nn.Module) -> nn.Module:
    """The model a user would deploy: for a peft model, a copy with its adapters merged into the base weights
    (a plain transformers model, every weight trainable, as the same function unwrapped would be); any other model
    is returned as it is. Membership scores that differentiate the weights (GradNorm) and attacks that train them
    (relearning) see this, not the adapters alone."""
    if not is_peft(model):
        return model
    merged = copy.deepcopy(model).merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged
