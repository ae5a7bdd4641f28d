"""GS-LoRA (Zhao et al., CVPR 2024) and GS-LoRA++ (its prototype extension): continual forgetting with
group-sparse LoRA.

Each call adds a fresh LoRA adapter (peft; A Kaiming-uniform, B zero) to both FFN linears of every transformer
block of the current model, trains only the adapter, and merges it into the weights, so in a sequence step k
starts from step k−1's merged model. The objective per batch is

    CE(replay) + β·ReLU(BND − CE(forget))   (+ GS-LoRA++'s prototype terms)

with BND = the forget loss of the incoming model + `bound` (the reference's 105–110 is for a CosFace head, so the
bound is set relative to the loss before unlearning), and the group lasso α·Σ_g ‖B_g‖₂ over blocks g, applied
as its proximal step after every optimiser step (B_g ← B_g·max(0, 1 − η·α/‖B_g‖), η the current learning rate),
which sets whole blocks exactly to zero. The LoRA update of a block is B_g·A_g, so a block with B_g = 0 is left
untouched; `run_metrics` reports how many. The replay set is a seeded `replay` share of the retain set (the
reference's 10%). There is no model selection: the reference kept the epoch with the best *test* H-Mean.
"""
from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn

from unlearn.data.tensordata import Batch
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, Range
from unlearn.methods.base import GradientMethod, OriginalTrainer, UnlearnContext
from unlearn.training import Streams, optimise


def check_lora_model(method: str, model: nn.Module, part: str, min_groups: int = 1) -> list[list[str]]:
    """The model's LoRA target groups (top-down blocks), or ConfigError naming a model that has them."""
    groups = model.lora_groups(part) if hasattr(model, "lora_groups") else []
    if len(groups) < min_groups or not all(groups):
        raise ConfigError(f"method={method} adapts a transformer backbone with LoRA (at least {min_groups} blocks "
                          f"with {part} linears); model {type(model).__name__} has {len(groups)}. Use model=vit_tiny")
    return groups


class GSLoRA(GradientMethod):
    traced = False  # a loop of its own
    trains_lora = False  # picks its own trained weights / runs its own loop
    name = "gs_lora"
    supports = ("classification",)
    knobs = {"rank": COUNT, "lora_alpha": POSITIVE, "beta": NON_NEGATIVE, "bound": NON_NEGATIVE,
             "group_lasso": NON_NEGATIVE, "replay": OPEN_FRACTION, "epochs": Range(1, integer=True)}

    def __init__(self, lr: float = 0.01, epochs: int = 10, batch_size: int = 32, optimizer: str = "adamw",
                 momentum: float = 0.9, weight_decay: float = 0.0, schedule: str = "constant", rank: int = 8,
                 lora_alpha: float = 8.0, beta: float = 0.5, bound: float = 5.0, group_lasso: float = 0.3,
                 replay: float = 0.1):
        super().__init__(lr=lr, epochs=epochs, batch_size=batch_size, optimizer=optimizer, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, stream="forget")
        self.rank, self.lora_alpha, self.beta, self.bound = int(rank), float(lora_alpha), float(beta), float(bound)
        self.group_lasso, self.replay = float(group_lasso), float(replay)
        self._groups: list[list[nn.Parameter]] = []
        self._bnd = 0.0
        self._lr = self.lr
        self._figures: dict[str, float] = {}

    def build_original(self, trainer: OriginalTrainer) -> None:
        # Not an owner of the original: this only refuses a model without LoRA targets before it is trained.
        check_lora_model(self.name, trainer.new_model("probe"), "ffn")
        return None

    # ---- the objective ------------------------------------------------------------------------
    def objective(self, ctx: UnlearnContext, model: nn.Module, forget: Optional[Batch], retain: Optional[Batch]) -> torch.Tensor:
        forget_ce = ctx.task.loss(model, forget).mean()
        loss = ctx.task.loss(model, retain).mean() + self.beta * F.relu(self._bnd - forget_ce)
        return loss + self.extra_terms(model, forget, retain)

    def extra_terms(self, model: nn.Module, forget: Batch, retain: Batch) -> torch.Tensor:
        """GS-LoRA++'s prototype terms; none here."""
        return torch.zeros((), device=forget["y"].device)

    def prepare_terms(self, ctx: UnlearnContext, model: nn.Module, replay) -> None:
        """Hook for GS-LoRA++ (class prototypes of the incoming model)."""

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The group lasso's proximal step: shrink each block's B matrices together, to exactly zero if small."""
        lr = optimizer.param_groups[0]["lr"]
        for group in self._groups:
            norm = torch.sqrt(sum((p ** 2).sum() for p in group))
            threshold = lr * self.group_lasso * self._step_scale(group)
            scale = torch.clamp(1 - threshold / norm.clamp_min(1e-30), min=0.0)
            for p in group:
                p.mul_(scale)

    def _step_scale(self, group: list[nn.Parameter]) -> float:
        """Norm of one optimiser step per unit learning rate: 1 for SGD (the plain proximal step); for Adam-type
        optimisers, whose steps are about lr per coordinate, sqrt(#coordinates), so α is then the share of a
        block's full step the lasso takes back: only blocks whose gradient keeps one direction outgrow it."""
        return 1.0 if self.optimizer == "sgd" else float(np.sqrt(sum(p.numel() for p in group)))

    # ---- one forgetting task ------------------------------------------------------------------
    @torch.no_grad()
    def _mean_loss(self, ctx: UnlearnContext, model: nn.Module, data) -> float:
        model.eval()
        losses = [ctx.task.loss(model, batch) for batch in data.batches(256)]
        model.train()
        return float(torch.cat(losses).mean())

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        base = copy.deepcopy(ctx.original)
        groups = check_lora_model(self.name, base, "ffn")
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator)))
        n_replay = max(1, int(round(self.replay * len(ctx.retain))))
        replay = ctx.retain.subset(np.sort(rng.choice(len(ctx.retain), n_replay, replace=False)))
        before = self._mean_loss(ctx, base, ctx.forget)
        self._bnd = before + self.bound
        self.prepare_terms(ctx, base, replay)
        lora = LoraConfig(r=self.rank, lora_alpha=self.lora_alpha, lora_dropout=0.0, init_lora_weights=True,
                          target_modules=[name for group in groups for name in group])
        model = get_peft_model(base, lora)
        self._groups = [[module.lora_B["default"].weight for name, module in model.named_modules()
                         if hasattr(module, "lora_B") and any(name.endswith(t) for t in group)] for group in groups]
        optimise(model, lambda m, f, r: self.objective(ctx, m, f, r), Streams(forget=ctx.forget, retain=replay, mode="forget"),
                 self._optim, ctx.runtime, ctx.generator, augment=ctx.task.augment, hooks=self,
                 desc=f"unlearn[{self.name}]", on_epoch=ctx.on_epoch)
        untouched = sum(all(not p.detach().any() for p in group) for group in self._groups)
        merged = model.merge_and_unload()
        self._figures = {"blocks_untouched": float(untouched), "blocks": float(len(groups)), "bnd": self._bnd,
                         "forget_ce_before": before, "forget_ce_after": self._mean_loss(ctx, merged, ctx.forget)}
        self._groups = []
        return merged

    def run_metrics(self) -> dict[str, float]:
        return dict(self._figures)


class GSLoRAPlusPlus(GSLoRA):
    """GS-LoRA++: adds λ_f·ReLU(BND_pro − KL(softmax(p_y) ‖ softmax(z_f))) + λ_r·KL(softmax(p_y) ‖ softmax(z_r)),
    with p_y the incoming model's mean logits over the examples of class y (its prototypes). The KL runs from
    the prototype to the model, as the authors compute it (see `prototype_kl`)."""

    name = "gs_lora_pp"
    knobs = {"lambda_f": NON_NEGATIVE, "lambda_r": NON_NEGATIVE, "bound_pro": NON_NEGATIVE}

    def __init__(self, lambda_f: float = 0.1, lambda_r: float = 0.1, bound_pro: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.lambda_f, self.lambda_r, self.bound_pro = float(lambda_f), float(lambda_r), float(bound_pro)
        self._prototypes: torch.Tensor | None = None

    @torch.no_grad()
    def prepare_terms(self, ctx: UnlearnContext, model: nn.Module, replay) -> None:
        model.eval()
        sums, counts = None, None
        for data in (ctx.forget, replay):
            for batch in data.batches(256):
                logits = model(batch["x"]).float()
                if sums is None:
                    sums = torch.zeros(logits.shape[1], logits.shape[1], device=logits.device)
                    counts = torch.zeros(logits.shape[1], device=logits.device)
                sums.index_add_(0, batch["y"], logits)
                counts.index_add_(0, batch["y"], torch.ones_like(batch["y"], dtype=torch.float))
        model.train()
        self._prototypes = sums / counts.clamp_min(1)[:, None]

    def extra_terms(self, model: nn.Module, forget: Batch, retain: Batch) -> torch.Tensor:
        def kl_to_prototype(batch: Batch) -> torch.Tensor:
            return prototype_kl(model(batch["x"]), self._prototypes[batch["y"]])

        return (self.lambda_f * F.relu(self.bound_pro - kl_to_prototype(forget))
                + self.lambda_r * kl_to_prototype(retain))


def prototype_kl(logits: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(softmax(prototype) ‖ softmax(logits)): the prototype's distribution is the reference
    (the target of `F.kl_div`), as in the GS-LoRA++ authors' code. logits, prototypes: (B, C) -> scalar."""
    log_model = F.log_softmax(logits.float(), dim=-1)
    log_proto = F.log_softmax(prototypes.float(), dim=-1)
    return F.kl_div(log_model, log_proto, log_target=True, reduction="batchmean")
