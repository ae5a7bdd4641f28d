"""`attack=ablate`: directional ablation of the residual stream (Łucki et al. 2024, who found that removing one
direction restores most of what RMU made the model "forget"). At each chosen decoder layer l, the direction
r_l = mean(forget states) − mean(retain states), over the hidden states after block l at the answer tokens'
predicting positions (`LanguageModelTask.answer_states`, the difference of means, as in the paper), is
measured on the probed model itself; a copy of the model then gets a forward hook on block l that projects r̂_l
out of its output, h ← h − (h·r̂_l) r̂_l, at every position of every input (prompts, answers, generation). The
attacked copy is scored with the task's metrics (`ablate.<metric>`); `ablate.cost_s` is the time to measure the
directions. `layer`: one block (1-based), or null for every block, each with its own direction (measured on the
unablated model).
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from unlearn.attacks.base import AttackContext, HiddenStateAttack
from unlearn.eval.probes import difference_of_means, project_out
from unlearn.knobs import Range


def ablation_hook(direction: torch.Tensor):
    """A forward hook projecting `direction` (unit, (H,)) out of a decoder block's output (a tensor or a tuple
    whose first element is the hidden states)."""
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (project_out(output[0], direction.to(output[0].device)), *output[1:])
        return project_out(output, direction.to(output.device))
    return hook


class Ablate(HiddenStateAttack):
    """Project the forget-vs-retain difference-of-means direction out of the residual stream at `layer` (null:
    every layer)."""

    name = "ablate"
    figure_names = ("cost_s",)
    knobs = {"layer": Range(1, integer=True, optional=True), "depth": Range(1, integer=True, optional=True)}

    def __init__(self, layer: int | None = None, depth: int | None = None):
        self._init_layer(layer, depth)
        self._cost = float("nan")

    def directions(self, model: nn.Module, ctx: AttackContext) -> dict[int, torch.Tensor]:
        layers = self.layers(model)
        forget = ctx.task.answer_states(model, ctx.forget, ctx.runtime, layers)["states"]
        retain = ctx.task.answer_states(model, ctx.retain, ctx.runtime, layers)["states"]
        return {l: difference_of_means(forget[l], retain[l]) for l in layers}

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        from unlearn.tasks.answers import decoder_layers

        start = time.perf_counter()
        directions = self.directions(model, ctx)
        out = copy.deepcopy(model)
        blocks = decoder_layers(out)
        for l, r in directions.items():
            blocks[l - 1].register_forward_hook(ablation_hook(r))
        self._cost = time.perf_counter() - start
        return out

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        return {"cost_s": self._cost}
