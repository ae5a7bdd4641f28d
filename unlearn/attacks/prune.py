"""`attack=prune`: unstructured magnitude pruning of the deployed model at `rate`, then the task's metrics (pruning a
model after unlearning has been reported to bring forgotten knowledge back).

The weights of `weight_matrices` (Linear and Conv layers; not the LM head, embeddings, norms or biases) are
pruned: with `scope=global`, the ⌊rate·n⌋ entries of smallest magnitude among all n of them; with
`scope=layer`, ⌊rate·n_t⌋ of each tensor's n_t. Exactly that many are zeroed (ties broken by position), so the
sparsity is the rate up to rounding. Figures: `cost_s` and `sparsity` (the share of zeros among those weights
afterwards, which counts weights that were zero already).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from unlearn.attacks.base import Attack, AttackContext, weight_matrices
from unlearn.knobs import OPEN_FRACTION, OneOf

SCOPES = ("global", "layer")


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of a flat tensor, ties by position (a stable sort)."""
    return torch.sort(values, stable=True).indices[:k]


def magnitude_masks(weights: list[torch.Tensor], rate: float, scope: str) -> list[torch.Tensor]:
    """Boolean keep-masks (w's shape) zeroing ⌊rate·n⌋ smallest-|w| entries, over all tensors or per tensor."""
    if scope == "layer":
        masks = []
        for w in weights:
            keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
            keep[_smallest(w.detach().abs().flatten().float(), int(rate * w.numel()))] = False
            masks.append(keep.view_as(w))
        return masks
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[_smallest(flat, int(rate * flat.numel()))] = False
    return [part.view_as(w) for part, w in zip(keep.split([w.numel() for w in weights]), weights)]


class Prune(Attack):
    """Magnitude pruning at `rate` in (0, 1), `scope` global | layer."""

    name = "prune"
    figure_names = ("cost_s", "sparsity")
    knobs = {"rate": OPEN_FRACTION, "scope": OneOf(SCOPES)}

    def __init__(self, rate: float = 0.3, scope: str = "global"):
        self.rate, self.scope = float(rate), str(scope)
        self._cost = float("nan")

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        start = time.perf_counter()
        out = copy.deepcopy(model)
        weights = [w for _, w in weight_matrices(out)]
        with torch.no_grad():
            for w, keep in zip(weights, magnitude_masks(weights, self.rate, self.scope)):
                w.mul_(keep.to(w.dtype))
        self._cost = time.perf_counter() - start
        return out

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        weights = [w for _, w in weight_matrices(attacked)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        return {"cost_s": self._cost, "sparsity": zeros / max(1, sum(w.numel() for w in weights))}
