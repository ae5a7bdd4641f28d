"""What the preference-style LM methods share (NPO, SimNPO, IdkDPO): one preference loss, sequence
log-probabilities through the one answer reduction, and the frozen reference model.

NPO is DPO with no preferred answer, and SimNPO is NPO with a length-normalised margin and no reference, so
all three are `preference_loss` of a different margin (reference/llm.md, "Methods").
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.tensordata import Batch
from unlearn.errors import ConfigError
from unlearn.tasks.answers import ANSWER, answer_logprobs, reduce_answer


def preference_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """−(2/β)·mean log σ(β·margin) over the batch: DPO's loss with its usual 2/β scale (so that it is
    (2/β)·log 2 at margin 0 and its gradient in the margin tends to −1/B per item as β → 0).

    margin: (B,) — DPO: ρ_win − ρ_lose; NPO: −(log π_θ − log π_ref); SimNPO: L̄_θ − δ. Returns a scalar."""
    if not beta > 0:
        raise ConfigError(f"the preference loss needs beta > 0, got {beta}")
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def sequence_logprob(model: nn.Module, batch: Batch, reduction: str = "sequence_sum") -> torch.Tensor:
    """log π(y|x) of each answer in `batch` (B,): the per-token answer log-probs reduced by `reduction`
    ("sequence_sum": S = Σ_t log π(y_t|·), NPO/DPO; "sequence_mean": −L̄, SimNPO)."""
    logp, answer = answer_logprobs(model, *(batch[name] for name in ANSWER))
    return reduce_answer(logp, answer, reduction)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of θo made once when unlearning starts and never trained: eval mode, no gradients."""
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


@torch.no_grad()
def reference_logprob(reference: nn.Module, batch: Batch) -> torch.Tensor:
    return sequence_logprob(reference, batch)
