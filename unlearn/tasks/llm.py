"""Causal language modelling on question-answer facts (TOFU-like): answer NLL, refusal relabelling, and the
TOFU/MUSE metric suite (see `LanguageModelTask`); the answer tensors and their one reduction are in `answers.py`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.facts import IGNORE, load_tokenizer
from unlearn.data.tensordata import Batch, TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, Range
from unlearn.models.lora import deployed
from unlearn.eval.llm import (answer_probability, exact_memorization, extraction_strength, ks_forget_quality, mia_auc,
                              min_k_plus_plus_tokens, min_k_scores, model_utility, normalised_probability, privleak,
                              rouge_l_recall, truth_preference, truth_ratio_forget, truth_ratios, zlib_scores)
from unlearn.eval.fluency import nonword_rate, perplexity, repetition_rate, vocabulary
from unlearn.eval.rmia import low_fpr_figures
from unlearn.report.loggers import write_json_atomic
from unlearn.runtime import Runtime
from unlearn.tasks.answers import (ANSWER, PARAPHRASE, PERTURBED, REFUSAL, _shifted_logits, answer_nll,
                                   decoder_layers, evaluating, split_world)
from unlearn.tasks.base import Splits, Task
from unlearn.training import OptimConfig

# The membership attacks' per-item scores (`membership_scores`), each reported as an AUC and TPRs at low FPR.
MIA_SCORES = ("loss", "zlib", "min_k", "min_k_pp", "gradnorm")


class LanguageModelTask(Task):
    """Question-answer facts for a causal LM (data from `unlearn.data.facts`).

    `evaluate` gives (reference/llm.md, "Metrics"):
    - forget: answer probability (exp of the answer's mean token NLL, averaged over examples), ROUGE-L recall
      of greedy answers, truth ratio as TOFU reports it (mean min(R, 1/R): 1 = indifferent between the true
      and the false answers), exact memorization and extraction strength of the answer tokens;
    - utility: retain (the kept authors) probability, ROUGE and truth ratio (mean max(0, 1 − R)); the same on
      the world-knowledge facts (probability normalised over the true and false answers); `model_utility`, the
      harmonic mean of these six, beside them;
    - membership (forget vs the holdout authors, AUC: original ≈ 1, retrain ≈ 0.5, over-unlearned → 0): LOSS,
      zlib, Min-K% (k = `min_k`), Min-K%++ and GradNorm.
    `compare_to_oracle` adds TOFU's forget quality (KS p-value of R against the oracle's R), the reference
    attack against the oracle (L̄_θ − L̄_oracle) and MUSE's privleak on Min-K% (MUSE's sign: negative =
    under-unlearned, see `unlearn.eval.llm.privleak`). The raw per-item R of every
    model of a run go to `truth_ratios.json` in the run dir.

    Avg. Gap averages the gaps of the six `gap_metrics`: each lies on [0, 1], and together they cover
    forgetting (forget_*, MIA) and utility (retain_*). Forget quality stays out: it is already a comparison
    with the oracle (1 for the oracle itself), spans hundreds of orders of magnitude, and would count the
    truth-ratio distribution twice.
    """

    kind = "llm"
    gap_metrics = ("forget_prob", "retain_prob", "forget_rouge", "retain_rouge", "forget_truth_ratio", "mia_loss_auc")
    utility_metrics = ("retain_prob", "retain_rouge")
    has_example_statistics = True

    knobs = {"eval_batch_size": COUNT, "max_new_tokens": COUNT, "min_k": Range(0, 1, low_open=True)}

    def __init__(self, tokenizer: str = "bytes", eval_batch_size: int = 64, max_new_tokens: int = 64, min_k: float = 0.4):
        if eval_batch_size < 1 or max_new_tokens < 1:
            raise ConfigError(f"need data.task.eval_batch_size >= 1 and data.task.max_new_tokens >= 1; got "
                              f"{eval_batch_size} and {max_new_tokens}")
        self.tokenizer = load_tokenizer(tokenizer)
        self.eval_batch_size = int(eval_batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.min_k = float(min_k)

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

    def generate_answers(self, model: nn.Module, data: TensorData, runtime: Runtime,
                         max_new_tokens: int | None = None, bounded: bool = True) -> list[str]:
        """Greedy answers to the questions, in batches, each stopping at eos or after `max_new_tokens` (default:
        the task's). `bounded`: also stop a batch at its longest true answer (TOFU's answers need no more); MUSE
        generates `max_new_tokens` whatever the reference's length (`bounded=False`)."""
        tok, answers = self.tokenizer, []
        cap = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        with evaluating(model):
            for batch in data.batches(self.eval_batch_size):
                mask = batch["prompt_mask"]
                start = int((mask.sum(0) > 0).nonzero()[0])  # prompts are left-padded: drop all-padding columns
                prompt, mask = batch["prompt_ids"][:, start:], mask[:, start:]
                budget = min(int((batch["labels"] != IGNORE).sum(1).max()), cap) if bounded else cap
                with runtime.autocast():
                    out = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=budget,
                                         do_sample=False, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id)
                for row in out[:, prompt.shape[1]:].tolist():
                    answers.append(tok.decode(row[: row.index(tok.eos_id)] if tok.eos_id in row else row))
        return answers

    def true_answers(self, data: TensorData, max_tokens: int | None = None) -> list[str]:
        """The reference answer of every example, decoded from its labels (eos dropped); cut to its first
        `max_tokens` tokens when given (MUSE's VerbMem reference)."""
        rows = [[t for t in row if t != IGNORE and t != self.tokenizer.eos_id] for row in data["labels"].tolist()]
        return [self.tokenizer.decode(row if max_tokens is None else row[:max_tokens]) for row in rows]

    def answer_states(self, model: nn.Module, data: TensorData, runtime: Runtime,
                      layers: list[int] | None = None) -> dict[str, object]:
        """The residual stream at every answer token of `data` (for the probing attacks), in eval mode: for each
        decoder layer l in `layers` (1-based, default all), `states[l]`, the block's output (n, H) in fp32 at the
        position that predicts the token (the answer's tokens and eos, teacher-forced, as the answer NLL scores
        them); `targets` (n,), the token; `example` (n,), its example's row in `data`; `first` (n,), whether it is
        its answer's first token. n counts the answer tokens of all examples."""
        blocks = decoder_layers(model)
        keep = list(range(1, len(blocks) + 1)) if layers is None else [int(l) for l in layers]
        captured: dict[int, torch.Tensor] = {}
        hook = lambda l: lambda _m, _i, out: captured.__setitem__(l, out[0] if isinstance(out, tuple) else out)  # noqa: E731
        handles = [blocks[l - 1].register_forward_hook(hook(l)) for l in keep]
        out: dict[str, list] = {"targets": [], "example": [], "first": []}
        states: dict[int, list] = {l: [] for l in keep}
        offset = 0
        try:
            with evaluating(model):
                for batch in data.batches(self.eval_batch_size):
                    ids, mask, labels = (batch[name] for name in ANSWER)
                    length = int(mask.sum(1).max())
                    with runtime.autocast():
                        model(input_ids=ids[:, :length], attention_mask=mask[:, :length], use_cache=False)
                    target = labels[:, 1:length]
                    where = target != IGNORE  # position t predicts token t + 1
                    for l in keep:
                        states[l].append(captured[l][:, : length - 1][where].float().cpu())
                    rows = torch.arange(len(ids), device=where.device)[:, None].expand_as(where)
                    out["targets"].append(target[where].cpu())
                    out["example"].append((rows[where] + offset).cpu())
                    out["first"].append(((where.cumsum(1) == 1) & where)[where].cpu())
                    offset += len(ids)
        finally:
            for handle in handles:
                handle.remove()
        return {"states": {l: torch.cat(chunks) for l, chunks in states.items()},
                **{name: torch.cat(chunks) for name, chunks in out.items()}}

    def rouge(self, model: nn.Module, data: TensorData, runtime: Runtime) -> float:
        scores = rouge_l_recall(self.generate_answers(model, data, runtime), self.true_answers(data))
        return float(scores.mean()) if scores.size else float("nan")

    def token_statistics(self, model: nn.Module, data: TensorData, runtime: Runtime) -> dict[str, np.ndarray]:
        """Per answer token of every example (N, T'), in eval mode: the label's log-probability `logp`, the
        answer `mask`, whether the argmax is the label (`correct`), and the mean and variance of log p over the
        vocabulary under p (`vocab_mean`, `vocab_var`, for Min-K%++)."""
        length = data["input_ids"].shape[-1] - 1
        out: dict[str, list] = {k: [] for k in ("logp", "mask", "correct", "vocab_mean", "vocab_var")}
        with evaluating(model):
            for batch in data.batches(self.eval_batch_size):
                with runtime.autocast():
                    logits, target = _shifted_logits(model, *(batch[name] for name in ANSWER))
                logprobs = logits.float().log_softmax(-1)
                probs = logprobs.exp()
                mean = (probs * logprobs).sum(-1)
                values = {"logp": logprobs.gather(-1, target.clamp_min(0)[..., None])[..., 0],
                          "mask": target != IGNORE, "correct": logits.argmax(-1) == target,
                          "vocab_mean": mean, "vocab_var": (probs * logprobs.square()).sum(-1) - mean.square()}
                for name, value in values.items():
                    out[name].append(F.pad(value, (0, length - value.shape[-1])).cpu())
        return {name: torch.cat(chunks).numpy() for name, chunks in out.items()}

    def gradient_norms(self, model: nn.Module, data: TensorData, runtime: Runtime) -> np.ndarray:
        """‖∇θ L̄_θ(x, y)‖₂ of every example's mean answer NLL over **every** weight of the deployed model (the
        GradNorm attack's score), in eval mode. A LoRA model is merged first (`deployed`) and frozen weights count
        too, so the score is a function of the model, not of which weights a method happened to train."""
        model = deployed(model)
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        was_training = model.training
        model.eval()
        norms = []
        try:
            for p in params:
                p.requires_grad_(True)
            for batch in data.batches(1):
                with runtime.autocast():
                    loss = self.loss(model, batch).sum()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                norms.append(float(torch.sqrt(sum(g.float().square().sum() for g in grads if g is not None))))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            model.train(was_training)
        return np.array(norms, dtype=np.float64)

    def membership_scores(self, model: nn.Module, data: TensorData, runtime: Runtime,
                          names: tuple[str, ...] = MIA_SCORES) -> dict[str, np.ndarray]:
        """Per-example scores of the MIA family (higher = less member-like): LOSS, zlib, Min-K%, Min-K%++,
        GradNorm; plus the token statistics they came from. GradNorm (one backward pass of the whole model per
        example) only if `names` holds it."""
        stats = self.token_statistics(model, data, runtime)
        nll = -np.where(stats["mask"], stats["logp"], 0.0).sum(1) / np.maximum(stats["mask"].sum(1), 1)
        z = min_k_plus_plus_tokens(stats["logp"], stats["vocab_mean"], stats["vocab_var"])
        return {"loss": nll, "zlib": zlib_scores(nll, self.true_answers(data)),
                "min_k": min_k_scores(stats["logp"], stats["mask"], self.min_k),
                "min_k_pp": min_k_scores(z, stats["mask"], self.min_k),
                **({"gradnorm": self.gradient_norms(model, data, runtime)} if "gradnorm" in names else {}),
                "stats": stats}

    def families(self, splits: Splits) -> dict[str, TensorData]:
        """The sets scored with true and false answers (truth ratio), "forget" first: the forget facts, the
        retained authors' and the world facts."""
        retain, world = split_world(splits.retain)
        return {"forget": splits.forget, "retain": retain, "world": world}

    def family_ratios(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, np.ndarray]:
        """Per-item truth ratios R of every family of `families`."""
        return {name: self.truth_ratios(model, data, runtime) for name, data in self.families(splits).items()}

    def utility(self, model: nn.Module, splits: Splits, ratios: dict[str, np.ndarray],
                runtime: Runtime) -> dict[str, float]:
        """TOFU's utility components: on the "retain" family its answer probability, ROUGE and truth ratio; on every
        other non-forget family (the world facts here; real authors and world facts on TOFU) the probability
        normalised over the true and false answers, ROUGE and truth ratio. `model_utility` is their harmonic mean."""
        out: dict[str, float] = {}
        for name, data in self.families(splits).items():
            if name == "forget":
                continue
            out[f"{name}_prob"] = (answer_probability(self.nll(model, data, ANSWER, runtime)) if name == "retain" else
                                   normalised_probability(self.nll(model, data, PARAPHRASE, runtime),
                                                          self.nll(model, data, PERTURBED, runtime)))
            out[f"{name}_rouge"] = self.rouge(model, data, runtime)
            out[f"{name}_truth_ratio"] = truth_preference(ratios[name])
        return out

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        self._splits = splits  # save_pictures writes the per-item truth ratios of the models of this run
        forget = self.membership_scores(model, splits.forget, runtime)
        holdout = self.membership_scores(model, splits.test, runtime)
        ratios = self.family_ratios(model, splits, runtime)
        utility = self.utility(model, splits, ratios, runtime)
        stats = forget["stats"]
        return {
            "forget_prob": answer_probability(forget["loss"]),
            "retain_prob": utility["retain_prob"],
            "forget_rouge": self.rouge(model, splits.forget, runtime),
            "retain_rouge": utility["retain_rouge"],
            "forget_truth_ratio": truth_ratio_forget(ratios["forget"]),
            "mia_loss_auc": mia_auc(forget["loss"], holdout["loss"]),
            "model_utility": model_utility(utility),
            **{k: v for k, v in utility.items() if k not in ("retain_prob", "retain_rouge")},
            "exact_memorization": float(np.mean(exact_memorization(stats["correct"], stats["mask"]))),
            "extraction_strength": float(np.mean(extraction_strength(stats["correct"], stats["mask"]))),
            **{f"mia_{name}_auc": mia_auc(forget[name], holdout[name]) for name in ("zlib", "min_k", "min_k_pp", "gradnorm")},
            **{k: v for name in MIA_SCORES
               for k, v in low_fpr_figures(-forget[name], -holdout[name], self.low_fpr, f"mia_{name}").items()},
        }

    def compare_to_oracle(self, model: nn.Module, oracle: nn.Module, splits: Splits,
                          runtime: Runtime) -> dict[str, float]:
        """TOFU's forget quality (KS p-value between this model's and the oracle's forget-set truth ratios), the
        reference attack (L̄_θ − L̄_oracle: forget vs holdout AUC) and MUSE's privleak on Min-K%."""
        def scores(m: nn.Module) -> dict[str, np.ndarray]:
            stats = {name: self.token_statistics(m, getattr(splits, name), runtime) for name in ("forget", "test")}
            return {name: (min_k_scores(s["logp"], s["mask"], self.min_k),
                           -np.where(s["mask"], s["logp"], 0.0).sum(1) / np.maximum(s["mask"].sum(1), 1))
                    for name, s in stats.items()}

        mine, ref = scores(model), scores(oracle)
        truth = self.families(splits)["forget"]
        return {"forget_quality": ks_forget_quality(self.truth_ratios(model, truth, runtime),
                                                    self.truth_ratios(oracle, truth, runtime)),
                "mia_reference_auc": mia_auc(mine["forget"][1] - ref["forget"][1], mine["test"][1] - ref["test"][1]),
                "privleak": privleak(mia_auc(mine["forget"][0], mine["test"][0]),
                                     mia_auc(ref["forget"][0], ref["test"][0]))}

    def save_pictures(self, run_dir, models: dict[str, nn.Module], runtime: Runtime, seed: int) -> None:
        """truth_ratios.json: the raw per-item truth ratio R of every model of the run, per family, so any
        summary convention can be recomputed."""
        splits = getattr(self, "_splits", None)
        if splits is None or not self.families(splits):
            return
        record = {label: {family: r.tolist() for family, r in self.family_ratios(m, splits, runtime).items()}
                  for label, m in models.items()}
        write_json_atomic(Path(run_dir) / "truth_ratios.json", record)

    def example_statistics(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, np.ndarray]:
        """The answer's mean token log-probability of every example (for KLoM, LiRA and the ε score)."""
        names = ("forget", "retain", "test") + (("val",) if len(splits.val) else ())
        return {name: -self.nll(model, getattr(splits, name), ANSWER, runtime) for name in names}

    def judged_by(self, model: nn.Module, reference: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, float]:
        """Fluency of the model's greedy answers to the forget and the retained authors' questions
        (`unlearn.eval.fluency`): their perplexity under `reference` (the run's original), their word-repetition
        rate and their share of words found nowhere in the world's answers. A model that "forgets" by answering
        gibberish shows here."""
        families = self.families(splits)
        known = vocabulary(text for data in (splits.forget, splits.retain, splits.test) for text in self.true_answers(data))
        out: dict[str, float] = {}
        for name in ("forget", "retain"):
            data = families[name]
            answers = self.generate_answers(model, data, runtime)
            out[f"{name}_fluency_ppl"] = perplexity(self.nll(reference, self.with_answers(data, answers), ANSWER, runtime))
            out[f"{name}_repetition"] = repetition_rate(answers)
            out[f"{name}_nonword"] = nonword_rate(answers, known)
        return out

    def with_answers(self, data: TensorData, answers: list[str]) -> TensorData:
        """`data`'s prompts with `answers` as their answers (tokenised apart, eos after each), for scoring."""
        from unlearn.data.llm_benchmarks import encode_continuations

        prompts = [[t for t, keep in zip(row, mask) if keep] for row, mask in
                   zip(data["prompt_ids"].tolist(), data["prompt_mask"].tolist())]
        length = max(len(p) for p in prompts) + max(len(self.tokenizer.encode(a)) for a in answers) + 1
        return encode_continuations(self.tokenizer, prompts, {"": [[a] for a in answers]}, length).to(
            data["input_ids"].device)
