"""Causal language modelling on question-answer facts (TOFU-like): answer NLL, refusal relabelling, and
answer probability, ROUGE-L, truth ratio, forget quality and the LOSS membership attack."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.facts import IGNORE, load_tokenizer
from unlearn.data.tensordata import Batch, TensorData
from unlearn.errors import ConfigError
from unlearn.eval.llm import answer_probability, ks_forget_quality, rouge_l_recall, truth_preference, truth_ratios
from unlearn.eval.mia import loss_attack_auc
from unlearn.runtime import Runtime
from unlearn.tasks.base import Splits, Task
from unlearn.training import OptimConfig
from unlearn.knobs import COUNT

# The tensors of each scored answer variant: (token ids, attention mask, labels).
ANSWER = ("input_ids", "attention_mask", "labels")
PARAPHRASE = ("paraphrase_ids", "paraphrase_mask", "paraphrase_labels")
PERTURBED = ("perturbed_ids", "perturbed_mask", "perturbed_labels")
REFUSAL = ("refusal_ids", "refusal_mask", "refusal_labels")


def answer_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the labelled (answer) tokens of each sequence; any leading shape, e.g. (B, K, L) -> (B, K)."""
    lead = ids.shape[:-1]
    ids, mask, labels = (t.reshape(-1, t.shape[-1]) for t in (ids, mask, labels))
    # Sequences are right-padded to the longest in the data set: cut the columns no sequence here uses.
    length = int(mask.sum(1).max())
    ids, mask, labels = ids[:, :length], mask[:, :length], labels[:, :length]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
    counts = (target != IGNORE).sum(1).clamp_min(1)
    return (nll.sum(1) / counts).reshape(lead)


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


class LanguageModelTask(Task):
    """Question-answer facts for a causal LM (data from `unlearn.data.facts`).

    `evaluate` gives, on forget and retain, the answer probability (exp of the answer's mean token NLL,
    averaged over examples) and the ROUGE-L recall of greedy answers; on forget, the truth ratio
    R = P(perturbed)/P(paraphrased) summarised as mean max(0, 1 − R) (`truth_preference`: 0 = no preference
    for the true answer, as in a model that never saw it); and the LOSS-attack AUC of forget vs the holdout
    authors. `compare_to_oracle` adds TOFU's forget quality (KS p-value of R against the oracle's R).

    Avg. Gap averages the gaps of all of `evaluate`'s metrics: each lies on [0, 1], and together they cover
    forgetting (forget_*, MIA) and utility (retain_*). Forget quality stays out: it is already a comparison
    with the oracle (1 for the oracle itself), spans hundreds of orders of magnitude, and would count the
    truth-ratio distribution twice.
    """

    kind = "llm"
    gap_metrics = ("forget_prob", "retain_prob", "forget_rouge", "retain_rouge", "forget_truth_ratio", "mia_loss_auc")
    utility_metrics = ("retain_prob", "retain_rouge")
    has_example_statistics = True

    knobs = {"eval_batch_size": COUNT, "max_new_tokens": COUNT}

    def __init__(self, tokenizer: str = "bytes", eval_batch_size: int = 64, max_new_tokens: int = 64):
        if eval_batch_size < 1 or max_new_tokens < 1:
            raise ConfigError(f"need data.task.eval_batch_size >= 1 and data.task.max_new_tokens >= 1; got "
                              f"{eval_batch_size} and {max_new_tokens}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.eval_batch_size = int(eval_batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return answer_nll(model, *(batch[name] for name in ANSWER))

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The same questions answered with a refusal ("I don't know."), a variant drawn per example."""
        n, variants = batch["refusal_ids"].shape[:2]
        rows = torch.arange(n, device=batch["refusal_ids"].device)
        choice = torch.randint(variants, (n,), generator=generator).to(rows.device)
        return {**batch, **{dst: batch[src][rows, choice] for src, dst in zip(REFUSAL, ANSWER)}}

    def fit(self, model: nn.Module, data: TensorData, recipe: OptimConfig, runtime: Runtime,
            generator: torch.Generator, desc: str = "fit",
            on_epoch: Optional[Callable[[str, int, float], None]] = None) -> nn.Module:
        vocab = model.get_input_embeddings().num_embeddings
        if int(data["input_ids"].max()) >= vocab:
            raise ConfigError(f"the data's tokenizer ({self.tokenizer.name}, {self.tokenizer.vocab_size} tokens) "
                              f"does not fit the model's {vocab}-token vocabulary; use the model's own tokenizer "
                              f"(data.tokenizer) or a model built for this one (model=llama_tiny)")
        return super().fit(model, data, recipe, runtime, generator, desc=desc, on_epoch=on_epoch)

    # ---- evaluation ----------------------------------------------------------------------------
    def nll(self, model: nn.Module, data: TensorData, variant: tuple[str, str, str], runtime: Runtime) -> np.ndarray:
        """Mean token NLL of one answer variant of every example, in eval mode."""
        chunks = []
        with evaluating(model):
            for batch in data.batches(self.eval_batch_size):
                with runtime.autocast():
                    chunks.append(answer_nll(model, *(batch[name] for name in variant)).float().cpu())
        return torch.cat(chunks).numpy()

    def truth_ratios(self, model: nn.Module, data: TensorData, runtime: Runtime) -> np.ndarray:
        return truth_ratios(self.nll(model, data, PARAPHRASE, runtime), self.nll(model, data, PERTURBED, runtime))

    def generate_answers(self, model: nn.Module, data: TensorData, runtime: Runtime) -> list[str]:
        """Greedy answers to the questions, in batches, each batch bounded by its longest true answer."""
        tok, answers = self.tokenizer, []
        with evaluating(model):
            for batch in data.batches(self.eval_batch_size):
                mask = batch["prompt_mask"]
                start = int((mask.sum(0) > 0).nonzero()[0])  # prompts are left-padded: drop all-padding columns
                prompt, mask = batch["prompt_ids"][:, start:], mask[:, start:]
                budget = min(int((batch["labels"] != IGNORE).sum(1).max()), self.max_new_tokens)
                with runtime.autocast():
                    out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=budget,
                                         do_sample=False, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
                for row in out[:, prompt.shape[1]:].tolist():
                    answers.append(tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row))
        return answers

    def true_answers(self, data: TensorData) -> list[str]:
        return [self.tokenizer.decode([t for t in row if t != IGNORE and t != self.tokenizer.eos_id])
                for row in data["labels"].tolist()]

    def rouge(self, model: nn.Module, data: TensorData, runtime: Runtime) -> float:
        scores = rouge_l_recall(self.generate_answers(model, data, runtime), self.true_answers(data))
        return float(scores.mean()) if scores.size else float("nan")

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        nll = {name: self.nll(model, getattr(splits, name), ANSWER, runtime) for name in ("forget", "retain", "test")}
        return {
            "forget_prob": answer_probability(nll["forget"]),
            "retain_prob": answer_probability(nll["retain"]),
            "forget_rouge": self.rouge(model, splits.forget, runtime),
            "retain_rouge": self.rouge(model, splits.retain, runtime),
            "forget_truth_ratio": truth_preference(self.truth_ratios(model, splits.forget, runtime)),
            "mia_loss_auc": loss_attack_auc(nll["forget"], nll["test"]),
        }

    def compare_to_oracle(self, model: nn.Module, oracle: nn.Module, splits: Splits,
                          runtime: Runtime) -> dict[str, float]:
        """TOFU's forget quality: KS p-value between this model's and the oracle's forget-set truth ratios."""
        return {"forget_quality": ks_forget_quality(self.truth_ratios(model, splits.forget, runtime),
                                                    self.truth_ratios(oracle, splits.forget, runtime))}

    def example_statistics(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, np.ndarray]:
        """The answer's mean token log-probability of every example (for KLoM, LiRA and the ε score)."""
        return {name: -self.nll(model, getattr(splits, name), ANSWER, runtime) for name in ("forget", "retain", "test")}
