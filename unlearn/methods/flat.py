"""FLAT (Wang et al., ICLR 2025): loss adjustment with only forget data — no retain set, no reference model.

For a forget question with its answer y_f and a template answer y_e (a refusal, `Task.relabel`), P_f and P_e
are the mean answer-token probabilities (probabilities, not log-probabilities). The loss is the variational
(f-GAN, Nowozin et al. 2016) form of an f-divergence between the template and the forget answers,
−g(P_e) + f*(g(P_f)), with g the divergence's output activation and f* its convex conjugate; minimising it
raises P_e and lowers P_f for every divergence in `DIVERGENCES`.

The public FLAT code uses exp(+v) activations for reverse KL, squared Hellinger and Neyman χ², which reverses
their gradient (it raises the forget answer); the table here uses the f-GAN activations (reference/llm.md).

`average` = "answer" (the paper's form: P per answer, "sequence_mean" reduction, then g, then the batch
mean) or "padded" (the reference code's: token probabilities averaged over every padded answer position of
the batch, answer tokens counted and the rest as 0, into one P per batch before g). LLM only.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from unlearn.errors import ConfigError
from unlearn.knobs import OneOf
from unlearn.methods.base import GradientMethod
from unlearn.tasks.answers import ANSWER, answer_logprobs, reduce_answer

Pair = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]

# divergence: (activation g(v), conjugate f*(t)), f-GAN's table (Nowozin et al. 2016, Table 6).
DIVERGENCES: dict[str, Pair] = {
    "kl": (lambda v: v, lambda t: torch.exp(t - 1)),
    "reverse_kl": (lambda v: -torch.exp(-v), lambda t: -1 - torch.log(-t)),
    "pearson": (lambda v: v, lambda t: t.square() / 4 + t),
    "neyman": (lambda v: 1 - torch.exp(-v), lambda t: 2 - 2 * torch.sqrt(1 - t)),
    "squared_hellinger": (lambda v: 1 - torch.exp(-v), lambda t: t / (1 - t)),
    "jeffrey": (lambda v: v, lambda t: t + t.square() / 4 + t.pow(3) / 16),  # the reference code's series
    "js": (lambda v: math.log(2) - torch.nn.functional.softplus(-v), lambda t: -torch.log(2 - torch.exp(t))),
    "tv": (lambda v: 0.5 * torch.tanh(v), lambda t: t),
}
AVERAGES = ("answer", "padded")


def flat_loss(p_template: torch.Tensor, p_forget: torch.Tensor, divergence: str) -> torch.Tensor:
    """Mean over the batch of −g(P_e) + f*(g(P_f)) for mean answer-token probabilities P_e (template answers)
    and P_f (forget answers), same shape (B,) or scalars in (0, 1]. Decreases in P_e and increases in P_f for
    every divergence. Raises ConfigError for a divergence not in DIVERGENCES. Source: FLAT (ICLR 2025), f-GAN."""
    if divergence not in DIVERGENCES:
        raise ConfigError(f"unknown FLAT divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    g, conjugate = DIVERGENCES[divergence]
    return (-g(p_template) + conjugate(g(p_forget))).mean()


def mean_token_probability(model, batch, average: str) -> torch.Tensor:
    """P of each answer (B,) for average="answer", or one P for the batch for average="padded"."""
    logp, answer = answer_logprobs(model, *(batch[name] for name in ANSWER))
    probs = logp.exp()
    if average == "answer":
        return reduce_answer(probs, answer, "sequence_mean")
    return (probs * answer).sum() / probs.numel()


class FLAT(GradientMethod):
    name = "flat"
    relabels = True
    supports = ("llm",)
    uses_retain = False
    knobs = {"divergence": OneOf(DIVERGENCES), "average": OneOf(AVERAGES)}

    def __init__(self, divergence: str = "tv", average: str = "answer", **optim):
        super().__init__(**optim)
        self.divergence, self.average = divergence, average
        self.name = self.name.replace("flat", f"flat-{divergence}", 1)

    def objective(self, ctx, model, forget, retain):
        template = ctx.task.relabel(forget, ctx.generator)
        return flat_loss(mean_token_probability(model, template, self.average),
                         mean_token_probability(model, forget, self.average), self.divergence)
