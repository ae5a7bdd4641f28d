"""What the adversarial-prompt attacks on text-to-image models share (DESIGN.md, "Attacks"; reference:
concept_erasure.md, "Attacks").

An attack of this kind changes no weight: it finds, for each target prompt of the request (the concept's
canonical prompts, one per combination of the world, as the task evaluates them), the text states that make
the model generate the concept again. The attacked model (`AttackedPrompts`) is the same model whose text
encoding of exactly those prompts is replaced by the attack's states; every other prompt reads as before. The
pipeline scores it with the task's metrics under the attack's prefix (`prompt.UA`, ...) and this module adds:
- pre_ASR: percent of target-prompt generations the judge assigns to the concept with no attack;
- ASR: percent that are assigned to it before or after the attack (the same noise for both), i.e.
  (pre-attack successes + generations the attack turns into successes) / N;
- cost_s: the attack's wall clock (its search; generations and judging not included).
Lower ASR is better for an erasure method.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from unlearn.attacks.base import Attack, AttackContext
from unlearn.errors import ConfigError, DivergedError
from unlearn.models.t2i import TextConditionedDiffusion
from unlearn.tasks.base import Task


class AttackedPrompts(TextConditionedDiffusion):
    """`base` with the text states of the prompts `ids` (P, L) replaced by `states` (P, L, D). Shares (never
    modifies) the base model's modules."""

    def __init__(self, base: TextConditionedDiffusion, ids: torch.Tensor, states: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("attacked_ids", ids.detach().clone(), persistent=False)
        self.register_buffer("attacked_states", states.detach().clone(), persistent=False)
        self.train(base.training)  # mode changes reach the base model: start from its own

    # The interface, read through to the base model.
    unet = property(lambda self: self.base.unet)
    text_encoder = property(lambda self: self.base.text_encoder)
    tokenizer = property(lambda self: self.base.tokenizer)
    noise_scheduler = property(lambda self: self.base.noise_scheduler)
    cond_dropout = property(lambda self: self.base.cond_dropout)
    clip_sample = property(lambda self: self.base.clip_sample)
    tokenizer_id = property(lambda self: self.base.tokenizer_id)
    latent_shape = property(lambda self: self.base.latent_shape)

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.to_latents(images)

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.base.to_images(latents)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        states = self.base.encode_text(ids)
        ids = ids.to(self.attacked_ids.device)
        match = (ids[:, None, :] == self.attacked_ids[None]).all(-1)           # (B, P)
        rows = match.any(1)
        if bool(rows.any()):
            states = states.clone()
            states[rows.to(states.device)] = self.attacked_states[match[rows].float().argmax(1)].to(states)
        return states


class PromptAttack(Attack):
    """Base of the prompt attacks: subclasses return the attacked text states of the target prompts."""

    figure_names = ("pre_ASR", "ASR", "cost_s")

    def check(self, task: Task) -> None:
        if task.kind != "t2i":
            raise ConfigError(f"attack={self.name} attacks the prompts of text-to-image models (data=shapes_t2i or "
                              f"model=sd_pretrained); the {task.kind} task has none (attack=relearn applies to it)")

    def adversarial_states(self, model: TextConditionedDiffusion, ctx: AttackContext, targets: torch.Tensor,
                           ids: torch.Tensor) -> torch.Tensor:
        """(P, L, D) text states for the target prompts (prompt-table rows `targets`, token ids `ids` (P, L))."""
        raise NotImplementedError

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        task = ctx.task
        targets = task.groups["target"][0]
        ids = task.token_ids(model)[targets.to(model.unet.device)]
        # A frozen copy: the search differentiates through it, and the model handed in keeps its flags and grads.
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        start = time.perf_counter()
        states = self.adversarial_states(frozen, ctx, targets, ids)
        self._seconds = time.perf_counter() - start
        if not torch.isfinite(states).all():
            raise DivergedError(f"attack {self.name}: non-finite adversarial text states")
        return AttackedPrompts(model, ids, states)

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        before = ctx.task.target_success(model, ctx.runtime, ctx.eval_seed)
        after = ctx.task.target_success(attacked, ctx.runtime, ctx.eval_seed)
        return {"pre_ASR": float(100 * np.mean(before)), "ASR": float(100 * np.mean(before | after)),
                "cost_s": float(self._seconds)}
