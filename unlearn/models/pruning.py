"""Prune first, then unlearn [Model Sparsity]: global unstructured pruning of conv weights.

Masks are applied as a parametrisation (torch.nn.utils.parametrize), `weight = original * mask`,
computed on every access: whatever an unlearning method does to `original` (gradients, weight decay,
momentum), pruned weights stay exactly zero, and the module still deep-copies (unlike
torch.nn.utils.prune, which caches a non-leaf `weight`). Sparsity is measured from the effective
weights, never assumed.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, OPEN_FRACTION

Masks = dict[str, torch.Tensor]
Train = Callable[[nn.Module], None]


def prunable(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The conv layers pruning acts on (the papers prune conv weights only)."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise ConfigError(f"pruning acts on conv weights, and {type(model).__name__} has none; use prune=none")
    return convs


class FixedMask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _mask_module(module: nn.Module) -> FixedMask | None:
    if parametrize.is_parametrized(module, "weight"):
        return next((p for p in module.parametrizations.weight if isinstance(p, FixedMask)), None)
    return None


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Attach (or replace) masks on the named modules' weights."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        existing = _mask_module(module)
        if existing is not None:
            existing.mask.copy_(mask.to(existing.mask))
        else:
            parametrize.register_parametrization(module, "weight", FixedMask(mask.to(module.weight)))
    return model


def masks_of(model: nn.Module) -> Masks:
    return {name: m.mask.detach().clone().cpu() for name, module in model.named_modules()
            if (m := _mask_module(module)) is not None}


def sparsity(model: nn.Module) -> float:
    """Fraction of conv weights that are exactly zero (measured, not assumed)."""
    with torch.no_grad():
        weights = [m.weight for m in prunable(model).values()]
        return float(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict with masks folded into plain `weight` entries (portable: loads into an unpruned model).

    Built by hand: remove_parametrizations on a deep copy would delete the property from the class the
    copy shares with the original."""
    state = {}
    modules = dict(model.named_modules())
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if ".parametrizations.weight." not in key:
                state[key] = value.detach().cpu().clone()
            elif key.endswith(".parametrizations.weight.original"):
                owner = key[: -len(".parametrizations.weight.original")]
                state[f"{owner}.weight"] = modules[owner].weight.detach().cpu().clone()
    return state


def global_magnitude_masks(scores: dict[str, torch.Tensor], keep_fraction: float,
                           current: Masks | None = None) -> Masks:
    """Keep the globally largest-scoring `keep_fraction` of all entries (already-pruned entries stay pruned)."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    k = max(1, int(round(keep_fraction * flat.numel())))
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    masks = {}
    for name, s in scores.items():
        mask = (s >= threshold).float()
        masks[name] = mask * current[name].to(mask) if current is not None and name in current else mask
    return masks


class Pruner:
    """Turns the dense trained original into the sparse original.

    `rewind_epoch`: the dense training checkpoint the sparse network restarts from (None: initialisation).
    `train(model)`: trains a (masked) model in place with the original's recipe.
    """

    rewind_epoch: int | None = None

    def __init__(self, rate: float):
        if not 0 < rate < 1:
            raise ConfigError(f"prune.rate must lie strictly between 0 and 1, got {rate}")
        self.rate = float(rate)

    def prune(self, dense: nn.Module, rewind_state: dict, train: Train) -> nn.Module:
        raise NotImplementedError

    def cache_fields(self) -> dict:
        return {"type": type(self).__qualname__, **vars(self)}


class IterativeMagnitude(Pruner):
    """IMP: rounds of pruning `per_round` of the remaining weights, each followed by rewind and retraining."""

    knobs = {"rate": OPEN_FRACTION, "per_round": OPEN_FRACTION, "rewind_epoch": NON_NEGATIVE_INT}

    def __init__(self, rate: float = 0.95, per_round: float = 0.2, rewind_epoch: int = 2):
        super().__init__(rate)
        if not 0 < per_round < 1:
            raise ConfigError(f"prune.per_round must lie strictly between 0 and 1, got {per_round}")
        self.per_round, self.rewind_epoch = float(per_round), int(rewind_epoch)

    def rounds(self) -> int:
        return math.ceil(math.log(1 - self.rate) / math.log(1 - self.per_round) - 1e-9)

    def prune(self, dense, rewind_state, train):
        model, masks = copy.deepcopy(dense), None
        for r in range(1, self.rounds() + 1):
            keep = max(1 - self.rate, (1 - self.per_round) ** r)
            scores = {n: m.weight.detach().abs() for n, m in prunable(model).items()}
            masks = global_magnitude_masks(scores, keep, masks)
            model = copy.deepcopy(dense)
            model.load_state_dict(rewind_state)
            apply_masks(model, masks)
            train(model)
        return model


class OneShotMagnitude(IterativeMagnitude):
    """OMP: prune the trained original once to `rate` by |weight|, rewind, retrain the sparse network
    (IMP with a single round)."""

    def __init__(self, rate: float = 0.95, rewind_epoch: int = 2):
        super().__init__(rate, per_round=rate, rewind_epoch=rewind_epoch)


class SynFlow(Pruner):
    """SynFlow: data-free pruning at initialisation by iterative synaptic flow, then sparse training."""

    knobs = {"rate": OPEN_FRACTION, "iterations": COUNT}

    def __init__(self, rate: float = 0.95, iterations: int = 100):
        super().__init__(rate)
        self.iterations = int(iterations)

    @staticmethod
    def _scores(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """|θ ⊙ ∂R/∂θ| with R the summed output of the network with |θ| and an all-ones input (eval mode,
        so batch norm does not normalise the flow away)."""
        probe = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            for p in probe.parameters():
                p.abs_()
        convs = prunable(probe)
        probe.zero_grad()
        probe(torch.ones((1, *input_shape), dtype=torch.float64, device=next(probe.parameters()).device)).sum().backward()
        def raw(m: nn.Module) -> torch.Tensor:
            return m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight

        with torch.no_grad():
            return {n: (raw(m).grad * m.weight).abs().float() for n, m in convs.items()}

    def prune(self, dense, rewind_state, train):
        model = copy.deepcopy(dense)
        model.load_state_dict(rewind_state)  # the initialisation: SynFlow prunes before any training
        first_conv = next(iter(prunable(model).values()))
        input_shape = (first_conv.in_channels, 32, 32)  # any size the zoo's models accept: only the flow matters
        masks = None
        for i in range(1, self.iterations + 1):
            keep = (1 - self.rate) ** (i / self.iterations)  # exponential schedule
            masks = global_magnitude_masks(self._scores(apply_masks(model, masks) if masks else model, input_shape), keep, masks)
        apply_masks(model, masks)
        train(model)
        return model
