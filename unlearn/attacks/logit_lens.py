"""`attack=logit_lens`: is the forgotten answer still readable from an intermediate layer? (Łucki et al. 2024;
nostalgebraist's logit lens.) The residual stream after each decoder layer, at every forget answer token's
predicting position (`LanguageModelTask.answer_states`), is read through the model's own final norm and LM head
as if it were the last layer. A probe: it changes no weight, and its findings are figures
(`logit_lens.<name>`):
- `prob`, `acc`: the forget answers' probability (mean over answers of exp(mean token log-probability), as
  forget_prob) and token accuracy (as exact_memorization) at the layer where `prob` is highest;
- `first_acc`: at that layer, the share of forget answers whose first token (the fact's value opens every
  answer of the facts data) is the argmax;
- `layer`: that layer (1-based); `last_prob`, `last_acc`: the last layer's, which are the model's own
  forget_prob and exact_memorization (a check); `cost_s`.
The oracle, which never saw the forget facts, gives the floor of each figure.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from unlearn.attacks.base import AttackContext, HiddenStateAttack
from unlearn.eval.probes import answer_scores
from unlearn.knobs import Range

LENS_BATCH = 4096  # answer tokens per head evaluation


def lens_readout(model: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability of each target, whether it is the argmax) with `states` (n, H) read through the model's
    final norm and LM head."""
    from unlearn.tasks.answers import final_norm

    norm, head = final_norm(model), model.get_output_embeddings()
    param = next(head.parameters())
    logp, correct = [], []
    with torch.inference_mode():
        for h, t in zip(states.split(LENS_BATCH), targets.split(LENS_BATCH)):
            logits = head(norm(h.to(param.device, param.dtype))).float().log_softmax(-1).cpu()
            logp.append(logits.gather(-1, t[:, None])[:, 0])
            correct.append(logits.argmax(-1) == t)
    return torch.cat(logp), torch.cat(correct)


class LogitLens(HiddenStateAttack):
    """Forget answers read through the final norm and LM head at every layer (or at `layer`)."""

    name = "logit_lens"
    scores_model = False
    figure_names = ("prob", "acc", "first_acc", "layer", "last_prob", "last_acc", "cost_s")
    knobs = {"layer": Range(1, integer=True, optional=True), "depth": Range(1, integer=True, optional=True)}

    def __init__(self, layer: int | None = None, depth: int | None = None):
        self._init_layer(layer, depth)

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        return model

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        from unlearn.tasks.answers import decoder_layers, final_norm

        start = time.perf_counter()
        if final_norm(attacked) is None or attacked.get_output_embeddings() is None:
            raise ValueError(f"attack=logit_lens: cannot find the final norm and LM head of {type(attacked).__name__}")
        layers = self.layers(attacked)
        depth = len(decoder_layers(attacked))
        found = ctx.task.answer_states(attacked, ctx.forget, ctx.runtime, sorted({*layers, depth}))
        per_layer = {}
        for l, states in found["states"].items():
            logp, correct = lens_readout(attacked, states, found["targets"])
            prob, acc = answer_scores(logp, correct, found["example"])
            first = float(correct[found["first"]].float().mean())
            per_layer[l] = (prob, acc, first)
        best = max(layers, key=lambda l: per_layer[l][0])
        prob, acc, first = per_layer[best]
        return {"prob": prob, "acc": acc, "first_acc": first, "layer": float(best), "last_prob": per_layer[depth][0],
                "last_acc": per_layer[depth][1], "cost_s": time.perf_counter() - start}
