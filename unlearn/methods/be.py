"""BE (boundary expanding): give the classifier one extra output, train the forget set toward that
shadow class, then remove it. The forget examples' mass moves into a class that no longer exists, so
they land near the remaining classes' boundaries. Classification only.

The layer widened is the last `nn.Linear` whose out_features equals the task's number of classes; the
new row starts at nn.Linear's default initialisation, as in the reference.
"""
from __future__ import annotations

import torch
from torch import nn

from unlearn.errors import ConfigError
from unlearn.methods.bs import ForgetTowardTargets


def classifier_head(model: nn.Module, num_classes: int) -> str:
    """Name of the last nn.Linear with `num_classes` outputs."""
    heads = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ConfigError(f"method 'be' needs an nn.Linear output layer with {num_classes} outputs; "
                          f"{type(model).__name__} has none")
    return heads[-1]


def resize_head(model: nn.Module, name: str, out_features: int) -> None:
    """Replace the linear layer `name` by one with `out_features` rows, keeping the rows both share."""
    old: nn.Linear = model.get_submodule(name)
    new = nn.Linear(old.in_features, out_features, bias=old.bias is not None,
                    device=old.weight.device, dtype=old.weight.dtype)
    keep = min(old.out_features, out_features)
    with torch.no_grad():
        new.weight[:keep] = old.weight[:keep]
        if old.bias is not None:
            new.bias[:keep] = old.bias[:keep]
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


class BoundaryExpanding(ForgetTowardTargets):
    traced = False  # mid-loop the model has an extra output class (removed at the end): not the deployed model
    name = "be"
    supports = ("classification",)

    def __init__(self, **optim):
        super().__init__(**optim)
        self._head: str | None = None

    def forget_targets(self, ctx):
        # The extra output's index is the old number of classes.
        return torch.full_like(ctx.forget["y"], ctx.task.num_classes)

    def prepare(self, ctx, model):
        self._head = classifier_head(model, ctx.task.num_classes)
        resize_head(model, self._head, ctx.task.num_classes + 1)

    def unlearn(self, ctx):
        model = super().unlearn(ctx)
        resize_head(model, self._head, ctx.task.num_classes)
        return model
