"""`attack=fewshot`: in-context examples (Łucki et al. 2024: a few examples in the prompt bring "unlearned"
knowledge back). Each forget question is preceded by `k` retain question/answer pairs drawn at random (the same
draws for θu, θo and θr), each in the training format: `[bos] q₁ a₁ [eos] [bos] q₂ a₂ [eos] … [bos] q a [eos]`,
with only the forget answer scored, teacher-forced. A probe: it changes no weight, and its findings are figures
(`fewshot.<name>`): `forget_prob` (mean over answers of exp(mean token log-probability), as the task's
forget_prob) and `forget_acc` (token accuracy, as exact_memorization) with the examples in the prompt; `cost_s`.
Compare with the row's own forget_prob and exact_memorization (no examples), and with the oracle's.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from unlearn.attacks.base import AttackContext, HiddenStateAttack
from unlearn.data.facts import IGNORE
from unlearn.eval.probes import answer_scores
from unlearn.knobs import COUNT


def _tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


def fewshot_inputs(forget, retain, k: int, generator: torch.Generator, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (ids, mask, labels) of every forget example preceded by k random retain examples (whole
    training sequences, each with its own bos and eos); labels only on the forget answer."""
    rows = []
    for i in range(len(forget)):
        chosen = torch.randperm(len(retain), generator=generator)[:k].tolist()
        context = [t for j in chosen for t in _tokens(retain["input_ids"][j], retain["attention_mask"][j])]
        ids, labels = _tokens(forget["input_ids"][i], forget["attention_mask"][i]), \
            forget["labels"][i][forget["attention_mask"][i].bool()].tolist()
        rows.append((context + ids, [IGNORE] * len(context) + labels))
    length = max(len(ids) for ids, _ in rows)
    out = {"ids": torch.full((len(rows), length), pad_id), "mask": torch.zeros((len(rows), length), dtype=torch.long),
           "labels": torch.full((len(rows), length), IGNORE)}
    for r, (ids, labels) in enumerate(rows):
        out["ids"][r, : len(ids)], out["labels"][r, : len(ids)] = torch.tensor(ids), torch.tensor(labels)
        out["mask"][r, : len(ids)] = 1
    return out


class FewShot(HiddenStateAttack):
    """`k` retain question/answer pairs before each forget question."""

    name = "fewshot"
    scores_model = False
    figure_names = ("forget_prob", "forget_acc", "cost_s")
    knobs = {"k": COUNT}

    def __init__(self, k: int = 3):
        self.k = int(k)
        self.layer, self._depth = None, None

    def attack(self, model: nn.Module, ctx: AttackContext) -> nn.Module:
        return model

    def figures(self, model: nn.Module, attacked: nn.Module, ctx: AttackContext) -> dict[str, float]:
        from unlearn.tasks.answers import _shifted_logits, evaluating

        start = time.perf_counter()
        task = ctx.task
        inputs = fewshot_inputs(ctx.forget.to("cpu"), ctx.retain.to("cpu"),
                                self.k, ctx.generator, task.tokenizer.pad_id)
        device = next(attacked.parameters()).device
        logp, correct, example = [], [], []
        with evaluating(attacked):
            for s in range(0, len(inputs["ids"]), task.eval_batch_size):
                ids, mask, labels = (inputs[n][s: s + task.eval_batch_size].to(device) for n in ("ids", "mask", "labels"))
                with ctx.runtime.autocast():
                    logits, target = _shifted_logits(attacked, ids, mask, labels)
                where = target != IGNORE
                lp = logits.float().log_softmax(-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
                logp.append(lp[where].cpu())
                correct.append((logits.argmax(-1) == target)[where].cpu())
                rows = torch.arange(len(ids), device=where.device)[:, None].expand_as(where)
                example.append((rows[where] + s).cpu())
        prob, acc = answer_scores(torch.cat(logp), torch.cat(correct), torch.cat(example))
        return {"forget_prob": prob, "forget_acc": acc, "cost_s": time.perf_counter() - start}
