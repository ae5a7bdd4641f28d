"""`attack=probe`: a linear probe on the residual stream (Łucki et al. 2024). At each decoder layer, a multinomial
logistic regression (scikit-learn, standardised features) is trained on the hidden states of the *retain* facts
to predict the next answer token (`LanguageModelTask.answer_states`: teacher-forced, every answer token and eos),
then applied to the forget facts: if it reads the forget answers better from θu than from the oracle, the
knowledge is still linearly present, whatever the model's own output says. A probe: it changes no weight, and
its findings are figures (`probe.<name>`):
- `acc`: the probe's token accuracy on the forget answers at the best layer (highest `acc`), `first_acc` its
  accuracy on their first tokens (the fact's value opens every answer of the facts data), `layer` that layer;
- `fit_acc`: its accuracy on the retain tokens it was trained on (what a linear read-out achieves at all);
- `cost_s`. The oracle's `acc` is the floor: what the retain facts alone teach about the forget answers.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from unlearn.attacks.base import AttackContext, HiddenStateAttack
from unlearn.knobs import COUNT, POSITIVE, Range


class LinearProbe(HiddenStateAttack):
    """Logistic-regression probes (inverse regularisation `C`, `max_iter` L-BFGS steps, at most `max_tokens`
    retain tokens drawn at random) at every layer (or at `layer`)."""

    name = "probe"
    scores_model = False
    figure_names = ("acc", "first_acc", "layer", "fit_acc", "cost_s")
    knobs = {"layer": Range(1, integer=True, optional=True), "depth": Range(1, integer=True, optional=True),
             "C": POSITIVE, "max_iter": COUNT, "max_tokens": COUNT}

    def __init__(self, layer: int | None = None, depth: int | None = None, C: float = 1.0, max_iter: int = 300,
                 max_tokens: int = 20000):
        self._init_layer(layer, depth)
        self.C, self.max_iter, self.max_tokens = float(C), int(max_iter), int(max_tokens)

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        return model

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        start = time.perf_counter()
        layers = self.layers(attacked)
        train = ctx.task.answer_states(attacked, ctx.retain, ctx.runtime, layers)
        test = ctx.task.answer_states(attacked, ctx.forget, ctx.runtime, layers)
        n = len(train["targets"])
        chosen = torch.randperm(n, generator=ctx.generator)[: self.max_tokens].sort().values if n > self.max_tokens \
            else torch.arange(n)
        y, y_test, first = train["targets"][chosen].numpy(), test["targets"].numpy(), test["first"].numpy()
        results = {}
        for l in layers:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter))
            probe.fit(train["states"][l][chosen].numpy(), y)
            predicted = probe.predict(test["states"][l].numpy())
            results[l] = (float(np.mean(predicted == y_test)), float(np.mean(predicted[first] == y_test[first])),
                          float(probe.score(train["states"][l][chosen].numpy(), y)))
        best = max(layers, key=lambda l: results[l][0])
        acc, first_acc, fit_acc = results[best]
        return {"acc": acc, "first_acc": first_acc, "layer": float(best), "fit_acc": fit_acc,
                "cost_s": time.perf_counter() - start}
