"""dm_direct [Attribute-to-Delete]: no training at all; the "unlearned model" is the datamodel prediction
itself, f̂(x) = f_θo(x) − multiplier·Σ_{i∈F} β[i, x], scored like any model. It tells how good the attribution
is, separately from how well DMM's fine-tuning reproduces it.

Its RTE is only the time to form the removal directions: the prediction itself costs one JVP per ensemble model
on every forward pass, so that cost lands in evaluation (and in every query), not in RTE. Compare RTEs with
that in mind. Saving it stores θo, the ensemble's weights and one weight-sized direction per model.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from unlearn.attribution import Attribution, Params
from unlearn.methods.base import Method, UnlearnContext
from unlearn.knobs import NON_NEGATIVE


class PredictedOutputs(nn.Module):
    """θo's logits minus the attributed contribution of F, for any input."""

    def __init__(self, original: nn.Module, attribution: Attribution, directions: list[Params], multiplier: float):
        super().__init__()
        self.original = original
        self.multiplier = multiplier
        self._attribution, self._directions = attribution, directions  # not submodules: never trained or saved twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.original(x) - self.multiplier * self._attribution.predicted_change(x, self._directions).to(x.device)

    def save_pretrained(self, path: Path) -> None:
        """Everything the prediction is made of: θo, the ensemble's weights and the removal directions."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"original": self.original.state_dict(), "multiplier": self.multiplier,
                   "ensemble": [m.model.state_dict() for m in self._attribution.members],
                   "directions": self._directions}
        torch.save(payload, path / ".prediction.pt.tmp")
        (path / ".prediction.pt.tmp").replace(path / "prediction.pt")


class DatamodelDirect(Method):
    name = "dm_direct"
    supports = ("classification",)

    knobs = {"multiplier": NON_NEGATIVE}

    def __init__(self, multiplier: float = 1.0):
        self.multiplier = float(multiplier)

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        attribution = ctx.attribution()
        return PredictedOutputs(copy.deepcopy(ctx.original).eval(), attribution,
                                attribution.removal_directions(ctx.forget_indices), self.multiplier)
