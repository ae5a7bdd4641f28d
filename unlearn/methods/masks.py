"""Weight masks shared by every gradient method (`method.mask`): SalUn's gradient saliency, WAGLE's weight
attribution, and keeping masked-out weights frozen."""
from __future__ import annotations

import torch
from torch import nn

from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.runtime import Runtime
from unlearn.tasks.base import Task

Mask = dict[str, torch.Tensor]


def loss_gradient(model: nn.Module, task: Task, data: TensorData, runtime: Runtime, batch_size: int) -> dict[str, torch.Tensor]:
    """Σ over `data` of ∇θ loss (one pass, summed per-example losses), in eval mode with no augmentation."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in data.batches(batch_size):
        with runtime.autocast():
            loss = task.loss(model, batch).sum()
        loss.backward()
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def forget_gradient(model: nn.Module, task: Task, forget: TensorData, runtime: Runtime, batch_size: int) -> dict[str, torch.Tensor]:
    """Σ over the forget set of ∇θ(−loss), with the model in eval mode and no augmentation."""
    return {n: -g for n, g in loss_gradient(model, task, forget, runtime, batch_size).items()}


def top_fraction_mask(scores: dict[str, torch.Tensor], fraction: float) -> Mask:
    """True for the `fraction` of entries with the largest score, ranked globally across all tensors."""
    if not 0 < fraction <= 1:
        raise ValueError(f"mask fraction must lie in (0, 1], got {fraction}")
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    k = max(1, int(round(fraction * flat.numel())))
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k, sorted=False).indices] = True
    mask, offset = {}, 0
    for name, s in scores.items():
        mask[name] = keep[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return mask


def saliency_mask(model: nn.Module, task: Task, forget: TensorData, runtime: Runtime, fraction: float,
                  batch_size: int = 256) -> Mask:
    """SalUn: the top `fraction` of weights by |forget-loss gradient|, ranked globally."""
    grads = loss_gradient(model, task, forget, runtime, batch_size)
    return top_fraction_mask({n: g.abs() for n, g in grads.items()}, fraction)


def wagle_scores(params: dict[str, torch.Tensor], forget_grad: dict[str, torch.Tensor],
                 retain_grad: dict[str, torch.Tensor], mu: float) -> dict[str, torch.Tensor]:
    """WAGLE's weight attribution (Jia et al., NeurIPS 2024): s_i = |(θ_i − G_r,i/μ)·G_f,i|, with G_f and G_r the
    summed forget- and retain-loss gradients: how much removing weight i's contribution to the forget loss
    would cost the retain loss under a 1/μ-weighted Newton step."""
    return {n: ((params[n] - retain_grad[n] / mu) * forget_grad[n]).abs() for n in forget_grad}


def wagle_mask(model: nn.Module, task: Task, forget: TensorData, retain: TensorData, runtime: Runtime,
               fraction: float, mu: float = 1e-6, batch_size: int = 256) -> Mask:
    """WAGLE: the top `fraction` of all weights (ranked globally) by `wagle_scores`; `fraction` is the share
    that is updated (TOFU GradDiff/NPO 0.95, IdkPO 0.8)."""
    forget_grad = loss_gradient(model, task, forget, runtime, batch_size)
    retain_grad = loss_gradient(model, task, retain, runtime, batch_size)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return top_fraction_mask(wagle_scores(params, forget_grad, retain_grad, mu), fraction)


MASKS = ("none", "saliency", "wagle")


def weight_mask(kind: str, model: nn.Module, task: Task, forget: TensorData, retain: TensorData, runtime: Runtime,
                fraction: float, mu: float) -> Mask:
    """The `kind` mask of `model` ("saliency" or "wagle"; see MASKS)."""
    builders = {"saliency": lambda: saliency_mask(model, task, forget, runtime, fraction),
                "wagle": lambda: wagle_mask(model, task, forget, retain, runtime, fraction, mu)}
    if kind not in builders:
        raise ConfigError(f"no weight mask {kind!r}; valid: {', '.join(builders)}")
    return builders[kind]()


class FrozenOutsideMask:
    """Step hooks that let only masked-in weights move.

    Gradients are masked after backward; after each step, masked-out weights are restored to their
    starting value and their optimiser state zeroed, because weight decay and momentum would otherwise
    still move them (the reference SalUn bug, REFERENCE.md).
    """

    def __init__(self, model: nn.Module, mask: Mask):
        params = dict(model.named_parameters())
        self.entries = [(params[n], m, params[n].detach().clone()) for n, m in mask.items()]

    def after_backward(self) -> None:
        for param, keep, _ in self.entries:
            if param.grad is not None:
                param.grad.mul_(keep)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for param, keep, start in self.entries:
            param.copy_(torch.where(keep, param, start))
            for buffer in optimizer.state.get(param, {}).values():
                if torch.is_tensor(buffer) and buffer.shape == param.shape:
                    buffer.mul_(keep)

    def fraction_kept(self) -> float:
        total = sum(keep.numel() for _, keep, _ in self.entries)
        return sum(int(keep.sum()) for _, keep, _ in self.entries) / max(total, 1)
