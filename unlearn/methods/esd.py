"""ESD — Erased Stable Diffusion [Gandikota et al., ICCV 2023]: fine-tune the UNet so that its prediction
under the concept's prompt follows negative guidance away from the concept, as computed by a frozen copy.

Each step: a batch of the concept's prompts c (every training template × combination, canonical word); x_t
from partially sampling them with the frozen model (DDIM, guidance `start_guidance`) down to a random step k
of `sampling_steps`, t the sampler's k-th timestep; target = ε*(x_t, ∅) − η·(ε*(x_t, c) − ε*(x_t, ∅)); loss
‖ε_θ(x_t, t, c) − target‖². Needs no image. `train` picks the parameters that move (the paper's subsets):
x = every Linear of the UNet's cross-attention (attn2), u = the UNet except attn2, x_strict = attn2.to_k/to_v.
The text encoder never moves.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.knobs import COUNT, NON_NEGATIVE, OneOf, Range
from unlearn.methods.base import GradientMethod, UnlearnContext
from unlearn.training import Streams, optimise

SUBSETS = ("x", "u", "x_strict")


def esd_parameters(model: nn.Module, train: str) -> list[str]:
    """Names (in `model.named_parameters()`) of the UNet parameters ESD-`train` updates."""
    names = [f"unet.{n}" for n, _ in model.unet.named_parameters()]
    if train == "x":
        return [n for n in names if ".attn2." in n]
    if train == "u":
        return [n for n in names if ".attn2." not in n]
    return [n for n in names if ".attn2.to_k." in n or ".attn2.to_v." in n]


class ESD(GradientMethod):
    name = "esd"
    supports = ("t2i",)
    uses_retain = False
    knobs = {"train": OneOf(SUBSETS), "eta": NON_NEGATIVE, "start_guidance": Range(0), "sampling_steps": COUNT}

    def __init__(self, train: str = "x", eta: float = 1.0, start_guidance: float = 3.0, sampling_steps: int = 20,
                 **optim):
        super().__init__(**optim)
        self.train, self.eta = train, float(eta)
        self.start_guidance, self.sampling_steps = float(start_guidance), int(sampling_steps)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        task = ctx.task
        model = copy.deepcopy(ctx.original)
        frozen = copy.deepcopy(ctx.original).eval().requires_grad_(False)
        trained = set(esd_parameters(model, self.train))
        flags = {name: param.requires_grad for name, param in model.named_parameters()}
        for name, param in model.named_parameters():
            param.requires_grad_(name in trained and flags[name])

        def objective(m: nn.Module, forget, _retain) -> torch.Tensor:
            prompts = forget["prompt"]
            with torch.no_grad():
                cond = task.text_states(frozen, prompts)
                uncond = task.text_states(frozen, torch.tensor([task.empty]))
                k = int(torch.randint(0, self.sampling_steps, ()))
                noise = torch.randn((len(prompts), *frozen.latent_shape)).to(cond.device)
                x_t = frozen.denoise(noise, cond, uncond, self.sampling_steps, self.start_guidance, until=k)
                t = frozen.sampler(self.sampling_steps).timesteps[k].to(cond.device)
                e_c = frozen(x_t, t, cond).float()
                e_u = frozen(x_t, t, uncond.expand(len(prompts), -1, -1)).float()
                target = e_u - self.eta * (e_c - e_u)
            prediction = m(x_t, t, task.text_states(m, prompts)).float()
            return (prediction - target).pow(2).mean()

        streams = Streams(forget=TensorData(prompt=task.concept_prompt_ids), mode="forget")
        optimise(model, objective, streams, self._optim, ctx.runtime, ctx.generator, desc=f"unlearn[esd-{self.train}]",
                 on_epoch=ctx.on_epoch)
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])
        return model
