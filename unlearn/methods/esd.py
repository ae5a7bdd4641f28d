"""ESD — Erased Stable Diffusion [Gandikota et al., ICCV 2023]: fine-tune the UNet so that its prediction
under the concept's prompt follows negative guidance away from the concept, as computed by a frozen copy.

The prompt c is the concept alone ("red"), as in the paper (ESD needs only the concept's prompt). Each step:
`batch_size` noises; x_t from partially sampling c with the frozen model (DDIM, guidance `start_guidance`)
down to a random step k of `sampling_steps`, t the sampler's k-th timestep; target =
ε*(x_t, ∅) − η·(ε*(x_t, c) − ε*(x_t, ∅)); loss ‖ε_θ(x_t, t, c) − target‖². An epoch is one such step (the
paper's iteration). `train` picks the parameters that move (the paper's subsets): x = every Linear of the
UNet's cross-attention (attn2), u = the UNet except attn2, x_strict = attn2.to_k/to_v. The text encoder never
moves. (Negative guidance on whole prompts such as "a red circle on black" would push away from everything
the prompt names — shape and background too — which is why the concept's own prompt is used.)
"""
from __future__ import annotations

import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.knobs import COUNT, NON_NEGATIVE, OneOf, Range
from unlearn.methods.base import GradientMethod, UnlearnContext
from unlearn.methods.erasure import erasure_copies, negative_guidance_target, partial_sample
from unlearn.models.t2i import require_cross_attention
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
    traced = False  # a loop of its own
    trains_lora = False  # picks its own trained weights / runs its own loop
    name = "esd"
    supports = ("t2i",)
    uses_retain = False
    knobs = {"train": OneOf(SUBSETS), "eta": NON_NEGATIVE, "start_guidance": Range(0), "sampling_steps": COUNT}

    def __init__(self, train: str = "x", eta: float = 1.0, start_guidance: float = 3.0, sampling_steps: int = 20,
                 **optim):
        super().__init__(**optim)
        self.train, self.eta = train, float(eta)
        self.start_guidance, self.sampling_steps = float(start_guidance), int(sampling_steps)

    def check_model(self, model_config: dict) -> None:
        require_cross_attention(model_config, f"esd method.train={self.train}")

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        task = ctx.task
        model, frozen, restore = erasure_copies(ctx.original, set(esd_parameters(ctx.original, self.train)))

        ids = frozen.tokenize([task.request.concept, ""]).to(frozen.unet.device)

        def objective(m: nn.Module, step, _retain) -> torch.Tensor:
            n = len(step["noise"])
            with torch.no_grad():
                cond, uncond = frozen.encode_text(ids).split(1)
                cond_n = cond.expand(n, -1, -1)
            x_t, t = partial_sample(frozen, cond_n, uncond, self.sampling_steps, self.start_guidance)
            target = negative_guidance_target(frozen, x_t, t, cond_n, uncond, self.eta)
            prediction = m(x_t, t, m.encode_text(ids[:1]).expand(n, -1, -1)).float()
            return (prediction - target).pow(2).mean()

        # One step per epoch: a "data set" of batch_size noise draws (the draws themselves come from torch's RNG).
        streams = Streams(forget=TensorData(noise=torch.arange(self.batch_size)), mode="forget")
        optimise(model, objective, streams, self._optim, ctx.runtime, ctx.generator, desc=f"unlearn[esd-{self.train}]",
                 on_epoch=ctx.on_epoch)
        restore()
        return model
