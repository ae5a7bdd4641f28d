"""CDC / DoCo — concept domain correction [Wu et al., AAAI 2025]: align what the model makes of the concept's
prompts with the anchor's output domain through a small discriminator, keep the anchor, and keep the
unlearning gradient from undoing the preservation.

Each iteration (one optimiser step of `batch_size` noises):
- x_t by partially sampling the concept's prompts c* (every training prompt that names the concept, drawn at
  random) with a frozen copy of the original (`unlearn.methods.erasure.partial_sample`);
- predicted clean images (latents for Stable Diffusion) x̂0_θ from ε_θ(x_t, t, c*) and x̂0_a from the frozen
  ε*(x_t, t, c_a), c_a the same prompt with the concept replaced by the request's anchor;
- the discriminator D (a small PatchGAN, Adam β (0.5, 0.999)) takes one BCE step telling x̂0_a (real) from
  x̂0_θ (fake); it first trains alone for `disc_warmup` steps against the original;
- the UNet's unlearning loss L_u = BCE(D(x̂0_θ), real) moves the concept's outputs into the anchor's domain;
  the preservation loss L_p = `prior_weight` · ‖ε_θ(x_a, t, c_a) − ε‖² (DreamBooth's prior loss) on training
  images whose prompt names the anchor;
- concept-preserving gradient, per cross-attention tensor: where g_u·g_p < 0, g_u ← g_u − (g_u·g_p/‖g_p‖²)·g_p
  (the true projection, `project_conflicting`); the step follows g_u + g_p, clipped to `grad_clip`.
  The reference implementation subtracts a term normalised by the norms (the cosine times the unit direction)
  instead of the component itself: it is wrong by the gradient's norm, so after its surgery g_u still conflicts
  with g_p whenever ‖g_u‖ ≠ 1. Here g_u·g_p = 0 after the surgery, exactly.
Trains the UNet's cross-attention (attn2), as the paper.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.concept import prompt_words, replace_word
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, Range
from unlearn.methods.base import GradientMethod, UnlearnContext
from unlearn.methods.erasure import erasure_copies, partial_sample, predicted_x0
from unlearn.methods.esd import esd_parameters
from unlearn.training import Streams, optimise


def project_conflicting(g_u: torch.Tensor, g_p: torch.Tensor) -> torch.Tensor:
    """g_u without its component along g_p when the two conflict (g_u·g_p < 0): g_u − (g_u·g_p/‖g_p‖²)·g_p;
    g_u unchanged otherwise (or when g_p = 0). Any equal shapes; the result has g_u's shape."""
    if g_u.shape != g_p.shape:
        raise ValueError(f"gradients of different shapes: {tuple(g_u.shape)} vs {tuple(g_p.shape)}")
    dot = torch.sum(g_u * g_p)
    norm = torch.sum(g_p * g_p)
    if not (dot < 0 and norm > 0):
        return g_u
    return g_u - (dot / norm) * g_p


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: strided convolutions to a map of real/fake logits, one per patch."""

    def __init__(self, channels: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


class _Surgery:
    """Step hooks: replace each trained tensor's gradient (g_u + g_p, from backward) by project(g_u) + g_p, with g_p
    computed by the objective, then clip."""

    def __init__(self, params: list[nn.Parameter], clip: float):
        self.params, self.clip, self.preserve = params, clip, None

    def after_backward(self, model: nn.Module) -> None:
        for param, g_p in zip(self.params, self.preserve):
            g_u = param.grad - g_p
            param.grad = project_conflicting(g_u, g_p) + g_p
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)

    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        pass


class CDC(GradientMethod):
    traced = False  # a loop of its own
    name = "cdc"
    supports = ("t2i",)
    uses_retain = False
    knobs = {"start_guidance": Range(0), "sampling_steps": COUNT, "prior_weight": NON_NEGATIVE,
             "disc_lr": POSITIVE, "disc_width": COUNT, "disc_warmup": NON_NEGATIVE_INT, "grad_clip": NON_NEGATIVE}

    def __init__(self, start_guidance: float = 3.0, sampling_steps: int = 20, prior_weight: float = 0.1,
                 disc_lr: float = 2e-4, disc_width: int = 16, disc_warmup: int = 20, grad_clip: float = 1.0, **optim):
        super().__init__(**optim)
        self.start_guidance, self.sampling_steps = float(start_guidance), int(sampling_steps)
        self.prior_weight, self.disc_lr, self.disc_width = float(prior_weight), float(disc_lr), int(disc_width)
        self.disc_warmup, self.grad_clip = int(disc_warmup), float(grad_clip)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        task, request = ctx.task, ctx.task.request
        if request.anchor == request.concept:
            raise ConfigError(f"CDC's anchor must differ from the concept {request.concept!r} (forget.anchor)")
        model, frozen, restore = erasure_copies(ctx.original, set(esd_parameters(ctx.original, "x")))
        params = [p for p in model.parameters() if p.requires_grad]

        device = frozen.unet.device
        concept_texts = [task.prompts[i] for i in task.concept_prompt_ids.tolist()]
        anchor_texts = [replace_word(text, request.concept, request.anchor) for text in concept_texts]
        ids = frozen.tokenize([*concept_texts, *anchor_texts, ""]).to(device)
        with torch.no_grad():
            states = frozen.encode_text(ids)
        n_prompts = len(concept_texts)
        concept_ids = ids[:n_prompts]
        uncond = states[-1:]
        # Prior preservation on real images of the anchor (training items whose prompt names it).
        anchor_rows = [i for i, text in enumerate(task.prompts) if request.anchor in prompt_words(text)]
        names_anchor = torch.isin(ctx.retain["prompt"].cpu(), torch.tensor(anchor_rows))
        anchor_items = ctx.retain.subset(torch.nonzero(names_anchor).flatten())
        if not len(anchor_items):
            raise ConfigError(f"CDC's prior term needs training images of the anchor {request.anchor!r}; the retain "
                              f"set has none (choose another forget.anchor)")

        disc = PatchDiscriminator(int(frozen.latent_shape[0]), self.disc_width).to(device)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=self.disc_lr, betas=(0.5, 0.999))

        def domains(m: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(x̂0_θ under concept prompts, x̂0 of the frozen model under the anchor prompts) at shared x_t."""
            pick = torch.randint(0, n_prompts, (n,))
            x_t, t = partial_sample(frozen, states[pick], uncond, self.sampling_steps, self.start_guidance)
            with torch.no_grad():
                anchor = predicted_x0(frozen, x_t, t, frozen(x_t, t, states[n_prompts + pick]).float())
            ours = predicted_x0(m, x_t, t, m(x_t, t, m.encode_text(concept_ids[pick])).float())
            return ours, anchor

        def disc_step(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
            loss = _bce(disc(real), True) + _bce(disc(fake.detach()), False)
            disc_opt.zero_grad(set_to_none=True)
            loss.backward()
            disc_opt.step()
            return loss.detach()

        # The discriminator first learns alone, against the original (the copy has not moved yet).
        for _ in range(self.disc_warmup):
            disc_step(*domains(model, self.batch_size))

        surgery = _Surgery(params, self.grad_clip)
        anchor_batches = [None]

        def objective(m: nn.Module, batch, _retain) -> torch.Tensor:
            n = len(batch["noise"])
            ours, anchor = domains(m, n)
            disc_step(ours, anchor)
            for p in disc.parameters():
                p.requires_grad_(False)
            unlearn_loss = _bce(disc(ours), True)
            for p in disc.parameters():
                p.requires_grad_(True)
            if anchor_batches[0] is None or not anchor_batches[0]:
                anchor_batches[0] = list(anchor_items.batches(self.batch_size, shuffle=True, generator=ctx.generator))
            prior = self.prior_weight * task.denoising_loss(m, anchor_batches[0].pop()).mean()
            surgery.preserve = [g if g is not None else torch.zeros_like(p)
                                for p, g in zip(params, torch.autograd.grad(prior, params, retain_graph=True,
                                                                             allow_unused=True))]
            return unlearn_loss + prior

        one_step = Streams(forget=TensorData(noise=torch.arange(self.batch_size)), mode="forget")
        optimise(model, objective, one_step, self._optim, ctx.runtime, ctx.generator, hooks=surgery,
                 desc="unlearn[cdc]", on_epoch=ctx.on_epoch)
        restore()
        return model
