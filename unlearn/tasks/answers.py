"""Answers of a causal LM, token by token: the tensors of each scored answer variant, the one mask-aware reduction
every LM loss and metric uses (reference/llm.md, "Reductions"), per-token log-probabilities of the labelled answer
tokens, and where a transformers causal LM keeps its decoder blocks and final norm (read by the probing attacks)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.facts import IGNORE, WORLD_GROUP
from unlearn.data.tensordata import TensorData

# The tensors of each scored answer variant: (token ids, attention mask, labels).
ANSWER = ("input_ids", "attention_mask", "labels")
PARAPHRASE = ("paraphrase_ids", "paraphrase_mask", "paraphrase_labels")
PERTURBED = ("perturbed_ids", "perturbed_mask", "perturbed_labels")
REFUSAL = ("refusal_ids", "refusal_mask", "refusal_labels")


REDUCTIONS = ("token_mean", "sequence_sum", "sequence_mean")


def reduce_answer(values: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """The one mask-aware reduction of per-token values over answer tokens (reference/llm.md, "Reductions").

    values: (..., T) per-token values (e.g. NLL); mask: (..., T) bool, True on answer tokens only (prompt,
    padding and a pad id equal to eos are False). `how`:
    - "token_mean": Σ values over every answer token of the batch / their count -> scalar (an HF model's
      `.loss`: long answers weigh more);
    - "sequence_sum": Σ per sequence -> (...,) (S_θ of NPO and DPO);
    - "sequence_mean": Σ per sequence / its answer length -> (...,) (L̄_θ of SimNPO, TOFU probabilities).
    A sequence without answer tokens has sum 0 and mean 0."""
    if how not in REDUCTIONS:
        raise ValueError(f"reduction {how!r} is not one of {REDUCTIONS}")
    mask = mask.to(values.dtype)
    masked = values * mask
    if how == "token_mean":
        return masked.sum() / mask.sum().clamp_min(1)
    total = masked.sum(-1)
    return total if how == "sequence_sum" else total / mask.sum(-1).clamp_min(1)


def _shifted_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits predicting each next token (B, T−1, V) in fp32, their labels (B, T−1)) for flat (B, T) inputs."""
    # Sequences are right-padded to the longest in the data set: cut the columns no sequence here uses.
    length = int(mask.sum(1).max())
    ids, mask, labels = ids[:, :length], mask[:, :length], labels[:, :length]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    return logits, labels[:, 1:]


def answer_logprobs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log π_θ(y_t | x, y_<t) of the labelled (answer) tokens and the answer mask, both (..., T')
    for inputs of any leading shape (..., T) (T' ≤ T − 1 after cutting all-padding columns). Non-answer
    positions hold 0 and mask False."""
    lead = ids.shape[:-1]
    logits, target = _shifted_logits(model, *(t.reshape(-1, t.shape[-1]) for t in (ids, mask, labels)))
    logp = -F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    return logp.reshape(*lead, -1), (target != IGNORE).reshape(*lead, -1)


def answer_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the labelled (answer) tokens of each sequence; any leading shape, e.g. (B, K, L) -> (B, K)."""
    logp, answer = answer_logprobs(model, ids, mask, labels)
    return reduce_answer(-logp, answer, "sequence_mean")


def split_world(data: TensorData) -> tuple[TensorData, TensorData]:
    """(the authors' facts, the world-knowledge facts) of a split, told apart by their group."""
    world = data["group"] == WORLD_GROUP
    return (data.subset(torch.nonzero(~world).flatten().cpu().numpy()),
            data.subset(torch.nonzero(world).flatten().cpu().numpy()))


def _submodule(model: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    for path in paths:
        found = model
        for part in path.split("."):
            found = getattr(found, part, None)
        if isinstance(found, nn.Module):
            return found
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The decoder blocks of a transformers causal LM (Llama/Qwen/Mistral, GPT-2, GPT-NeoX), None if not found;
    the probing attacks read (and `attack=ablate` edits) the residual stream at their outputs."""
    found = _submodule(model, ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"))
    return found if isinstance(found, nn.ModuleList) else None


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last decoder block and the LM head (the logit lens applies it to every layer)."""
    return _submodule(model, ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                              "model.decoder.final_layer_norm"))


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients, restoring the model's previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
