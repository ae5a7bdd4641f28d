"""Pieces the gradient-based concept-erasure methods share (ESD, AdvUnlearn, CDC):
noisy latents x_t made by partially sampling a prompt with the frozen model, ESD's negative-guidance target,
and the predicted clean image x̂0 of a prediction.

x_t as in ESD [Gandikota et al., ICCV 2023]: from noise, DDIM with guidance `guidance` under the prompt,
stopped at a random step k of `steps`; t is the sampler's k-th timestep. Draws come from torch's global RNG
(seeded by the pipeline's method stage), on the CPU, so a seed gives the same draws on every device.
"""
from __future__ import annotations

import copy

from typing import Callable, Collection

import torch
from torch import nn


@torch.no_grad()
def partial_sample(frozen, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
                   guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t (B, C, H, W), t (scalar timestep)) for text states `cond` (B, L, D), `uncond` (1, L, D)."""
    k = int(torch.randint(0, steps, ()))
    noise = torch.randn((len(cond), *frozen.latent_shape)).to(cond.device)
    x_t = frozen.denoise(noise, cond, uncond, steps, guidance, until=k)
    return x_t, frozen.sampler(steps).timesteps[k].to(cond.device)


@torch.no_grad()
def negative_guidance_target(frozen, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                             eta: float) -> torch.Tensor:
    """ESD's target ε*(x_t, ∅) − η·(ε*(x_t, c) − ε*(x_t, ∅)) (B, C, H, W), float32. An affine mix whose weights
    sum to 1, so it means the same for ε-, v- and x0-predicting models."""
    e_c = frozen(x_t, t, cond).float()
    e_u = frozen(x_t, t, uncond.expand(len(x_t), -1, -1)).float()
    return e_u - eta * (e_c - e_u)


def predicted_x0(model, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """x̂0 from a model's prediction at x_t: (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t for ε-prediction, √ᾱ_t·x_t − √(1−ᾱ_t)·v
    for v-prediction, the prediction itself for x0 ("sample") prediction. Shapes (B, C, H, W); t scalar or (B,)."""
    kind = model.noise_scheduler.config.prediction_type
    if kind == "sample":
        return prediction
    alpha = model.noise_scheduler.alphas_cumprod.to(x_t.device)[t.to(x_t.device).long()].float()
    alpha = alpha.reshape(-1, *([1] * (x_t.dim() - 1))) if alpha.dim() else alpha
    if kind == "v_prediction":
        return alpha.sqrt() * x_t - (1 - alpha).sqrt() * prediction
    return (x_t - (1 - alpha).sqrt() * prediction) / alpha.sqrt()


def erasure_copies(original: nn.Module, trained: Collection[str]) -> tuple[nn.Module, nn.Module, Callable[[], None]]:
    """(model, frozen, restore): a copy of `original` in which exactly the parameters named in `trained` require
    gradients (the text encoder's too, though models keep it frozen otherwise), a frozen eval-mode copy that
    computes the targets, and the call that gives the model its original requires_grad flags back once training
    is over."""
    model = copy.deepcopy(original)
    frozen = copy.deepcopy(original).eval().requires_grad_(False)
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)

    def restore() -> None:
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])

    return model, frozen, restore
