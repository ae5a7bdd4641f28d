"""AdvUnlearn [Zhang et al., NeurIPS 2024]: erasure trained against an inner prompt attack (bilevel).

Each iteration (one optimiser step of `batch_size` noises):
- x_t by partially sampling the concept's prompt c (the concept alone, "red", as ESD) with a frozen copy of
  the original (`unlearn.methods.erasure`);
- inner attack (after `warmup` iterations of plain ESD): k = `tokens` continuous token embeddings δ inserted
  after BOS, `attack_steps` Adam steps (lr `attack_lr`) on ‖ε_θ(x_t, E_θ([δ; c])) − ε*(x_t, E*(c))‖², so the
  current model restores what the original predicted for the concept. δ starts from the embeddings of k
  random vocabulary tokens and carries over from one iteration to the next (a warm start: the attack tracks
  the model as it moves);
- outer step: ESD's loss on the attacked prompt, ‖ε_θ(x_t, E_θ([δ; c])) − (ε*(∅) − η(ε*(c) − ε*(∅)))‖², plus
  γ·‖ε_θ(x_r, E_θ(c_r)) − ε*(x_r, E*(c_r))‖² on `retain_batch` retain prompts c_r (x_r partially sampled from
  c_r by the frozen model the same way).
`train` picks what moves: text_encoder (every transformer layer and the final norm, not the token and
position embeddings: the paper's default), unet_x (the UNet's cross-attention, as ESD-x) or unet_u (the UNet
except cross-attention, as ESD-u). Retain prompts: `retain_prompts`, or by default the request's preserved
concepts as one-word prompts ("orange", "yellow", ... when red is erased), never the evaluation prompts.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, OneOf, Range
from unlearn.methods.base import GradientMethod, UnlearnContext
from unlearn.methods.erasure import erasure_copies, negative_guidance_target, partial_sample
from unlearn.methods.esd import esd_parameters
from unlearn.models.prompt_embeddings import encode_replacing, insert_slots, pad_token_id
from unlearn.training import Streams, optimise

TRAINED = ("text_encoder", "unet_x", "unet_u")


def advunlearn_parameters(model: nn.Module, train: str) -> list[str]:
    """Names (in `model.named_parameters()`) of the parameters AdvUnlearn-`train` updates."""
    if train == "text_encoder":
        return [f"text_encoder.{n}" for n, _ in model.text_encoder.named_parameters() if "embeddings." not in n]
    return esd_parameters(model, train.removeprefix("unet_"))


class AdvUnlearn(GradientMethod):
    traced = False  # a loop of its own
    name = "advunlearn"
    supports = ("t2i",)
    uses_retain = False
    knobs = {"train": OneOf(TRAINED), "eta": NON_NEGATIVE, "start_guidance": Range(0), "sampling_steps": COUNT,
             "tokens": COUNT, "attack_steps": COUNT, "attack_lr": POSITIVE, "retain_weight": NON_NEGATIVE,
             "retain_batch": COUNT, "warmup": NON_NEGATIVE_INT}

    def __init__(self, train: str = "text_encoder", eta: float = 1.0, start_guidance: float = 3.0,
                 sampling_steps: int = 20, tokens: int = 1, attack_steps: int = 30, attack_lr: float = 1e-3,
                 retain_weight: float = 0.5, retain_batch: int = 4, warmup: int = 0,
                 retain_prompts: Optional[Sequence[str]] = None, **optim):
        super().__init__(**optim)
        if retain_prompts is not None and not [p for p in retain_prompts if str(p).strip()]:
            raise ConfigError("method.retain_prompts is empty: AdvUnlearn's retain term needs prompts to keep "
                              "(null: the request's preserved concepts)")
        self.train, self.eta, self.start_guidance = train, float(eta), float(start_guidance)
        self.sampling_steps, self.tokens, self.attack_steps = int(sampling_steps), int(tokens), int(attack_steps)
        self.attack_lr, self.retain_weight, self.retain_batch = float(attack_lr), float(retain_weight), int(retain_batch)
        self.warmup = int(warmup)
        self.retain_prompts = None if retain_prompts is None else [str(p).strip() for p in retain_prompts if str(p).strip()]

    def check_model(self, model_config: dict) -> None:
        super().check_model(model_config)
        if self.train == "text_encoder" and model_config.get("text_layers") == 0:
            raise ConfigError("method.train=text_encoder trains the text encoder's transformer layers, and this model "
                              "has none (model.text_layers=0); use method.train=unet_x or unet_u, or model.text_layers>=1")

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        request = ctx.task.request
        retain_texts = self.retain_prompts if self.retain_prompts is not None else list(request.preserve)
        if not retain_texts:
            raise ConfigError("AdvUnlearn's retain prompt set is empty (forget.preserve=[] and no "
                              "method.retain_prompts): give method.retain_prompts")
        model, frozen, restore = erasure_copies(ctx.original, set(advunlearn_parameters(ctx.original, self.train)))

        device = frozen.unet.device
        ids = frozen.tokenize([request.concept, ""]).to(device)
        retain_ids = frozen.tokenize(retain_texts).to(device)
        adv_ids, slots = insert_slots(ids[:1], self.tokens, pad_token_id(frozen))
        table = model.text_encoder.get_input_embeddings().weight
        start = torch.randint(0, table.shape[0], (self.tokens,), generator=ctx.generator)
        delta = table.detach()[start.to(table.device)].clone().requires_grad_(True)
        inner = torch.optim.Adam([delta], lr=self.attack_lr)
        with torch.no_grad():
            cond, uncond = frozen.encode_text(ids).split(1)
            retain_states = frozen.encode_text(retain_ids)
        step = [0]

        def attack(m: nn.Module, x_t: torch.Tensor, t: torch.Tensor, restored: torch.Tensor) -> None:
            for _ in range(self.attack_steps):
                states = encode_replacing(m, adv_ids, slots, delta).expand(len(x_t), -1, -1)
                loss = (m(x_t, t, states).float() - restored).pow(2).mean()
                inner.zero_grad(set_to_none=True)
                (delta.grad,) = torch.autograd.grad(loss, [delta])
                inner.step()

        def objective(m: nn.Module, batch, _retain) -> torch.Tensor:
            n = len(batch["noise"])
            x_t, t = partial_sample(frozen, cond.expand(n, -1, -1), uncond, self.sampling_steps, self.start_guidance)
            target = negative_guidance_target(frozen, x_t, t, cond.expand(n, -1, -1), uncond, self.eta)
            if step[0] >= self.warmup:
                with torch.no_grad():
                    restored = frozen(x_t, t, cond.expand(n, -1, -1)).float()
                attack(m, x_t, t, restored)
                states = encode_replacing(m, adv_ids, slots, delta.detach())
            else:
                states = m.encode_text(ids[:1])
            step[0] += 1
            loss = (m(x_t, t, states.expand(n, -1, -1)).float() - target).pow(2).mean()
            if self.retain_weight > 0:
                pick = torch.randint(0, len(retain_ids), (self.retain_batch,))
                x_r, t_r = partial_sample(frozen, retain_states[pick], uncond, self.sampling_steps, self.start_guidance)
                with torch.no_grad():
                    kept = frozen(x_r, t_r, retain_states[pick]).float()
                loss = loss + self.retain_weight * (m(x_r, t_r, m.encode_text(retain_ids[pick])).float() - kept).pow(2).mean()
            return loss

        # One step per epoch: a "data set" of batch_size noise draws (the draws come from torch's RNG), as ESD.
        streams = Streams(forget=TensorData(noise=torch.arange(self.batch_size)), mode="forget")
        optimise(model, objective, streams, self._optim, ctx.runtime, ctx.generator,
                 desc=f"unlearn[advunlearn-{self.train}]", on_epoch=ctx.on_epoch)
        restore()
        return model
