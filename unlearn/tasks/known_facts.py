"""Forgetting knowledge a pretrained model really has (`data=known_facts`, RWKU/WMDP-style), scored against the base.

There is no oracle: nobody can retrain a pretrained model without the facts. The data's recipe trains 0 epochs,
so the run's original *and* its oracle column are the base model itself: a good method lowers `forget_acc` /
`forget_prob` far below the base's and keeps the neighbour and utility metrics near it. Oracle-relative metrics
(forget quality, privleak, the reference attack, Avg. Gap) are absent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from torch import nn

from unlearn.data.known_facts import greedy_correct
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.eval.fluency import nonword_rate, perplexity, repetition_rate, vocabulary
from unlearn.eval.llm import answer_probability, exact_memorization, extraction_strength, mia_auc
from unlearn.eval.rmia import low_fpr_figures
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT
from unlearn.runtime import Runtime
from unlearn.tasks.answers import ANSWER
from unlearn.tasks.base import Splits
from unlearn.tasks.llm import MIA_SCORES, LanguageModelTask

if TYPE_CHECKING:
    from unlearn.cache import Cache


class KnownFactsTask(LanguageModelTask):
    """Question-answer facts the base model knows (`unlearn.data.known_facts`). `evaluate` gives:
    - accuracy (share of greedy answers, at most `max_new_tokens`, containing the answer or an alias:
      `answer_matches`) on the forget facts (`forget_acc`; ≈ 1 for the base model, which the filter kept them
      for), their *neighbours* (`neighbour_acc`: kept facts of the forgotten entities' clusters, i.e. the other
      countries and the places of the same region) and *utility* facts (`utility_acc`: every other kept fact);
    - answer probability (exp of the mean token NLL of the answer sentence, averaged over facts) on the same
      three sets (`forget_prob`, `neighbour_prob`, `utility_prob`), exact memorization and extraction strength
      of the forget answers;
    - membership: the AUCs of the attacks in `mia` (of LOSS, zlib, Min-K%, Min-K%++, GradNorm; by default all but
      GradNorm, which costs a backward pass of the whole model per fact) telling the forget facts from facts the model does not know (the
      test split; base ≈ 1, a model that forgot → 0.5), with TPRs at low FPR;
    - `judged_by`: the fluency of the forget answers (perplexity under the base model, repetition, words found in
      no question or answer of the data): a model that answers gibberish has not forgotten well.
    Neighbour and utility sets are scored on at most `max_eval` facts each (a fixed draw), so a run's cost does not
    grow with the file. There is no Avg. Gap (`gap_metrics` is empty, so the row's `avg_gap` is NaN and the
    leaderboard lists the setting as not ranked): a distance from the *base* model is small for a method that forgot
    nothing, so averaging it would rank the methods upside down. Read `forget_acc` (lower is better) against
    `neighbour_acc` and `utility_acc` (higher is better), as WMDP reports accuracy and MMLU."""

    gap_metrics: tuple[str, ...] = ()
    utility_metrics = ("neighbour_acc", "utility_acc")
    knobs = {"max_eval": COUNT}

    def __init__(self, tokenizer: str = "bytes", eval_batch_size: int = 32, max_new_tokens: int = 24,
                 min_k: float = 0.4, max_eval: int = 64, mia: Sequence[str] = ("loss", "zlib", "min_k", "min_k_pp")):
        super().__init__(tokenizer, eval_batch_size, max_new_tokens, min_k)
        self.max_eval = int(max_eval)
        unknown = sorted(set(mia) - set(MIA_SCORES))
        if unknown or not mia:
            raise ConfigError(f"data.task.mia={list(mia)}: name at least one of {', '.join(MIA_SCORES)}"
                              + (f" ({', '.join(unknown)} is not one)" if unknown else ""))
        self.mia = tuple(name for name in MIA_SCORES if name in mia)
        self.accept: list[list[str]] = []
        self.vocabulary: set[str] = set()

    def setup(self, data: DataBundle, cache: "Cache", runtime: Runtime, seed: int) -> None:
        self.accept = data.info["accept"]
        self.vocabulary = vocabulary(self.tokenizer.decode(row) for part in (data.train, data.test)
                                     for row in part["input_ids"].tolist())

    def families(self, splits: Splits) -> dict[str, TensorData]:
        return {}  # one answer per fact: no true/false answer pairs, no truth ratios

    def related(self, splits: Splits) -> tuple[TensorData, TensorData]:
        """(neighbours, utility): the kept facts in a cluster of a forgotten entity, and all other kept facts,
        each cut to at most `max_eval` facts by a fixed draw."""
        forgotten = np.unique(splits.forget["cluster"].cpu().numpy())
        near = np.isin(splits.retain["cluster"].cpu().numpy(), forgotten)

        def capped(rows: np.ndarray) -> TensorData:
            if len(rows) > self.max_eval:
                rows = np.sort(np.random.default_rng(0).permutation(rows)[: self.max_eval])
            return splits.retain.subset(rows)

        return capped(np.flatnonzero(near)), capped(np.flatnonzero(~near))

    def accuracy(self, model: nn.Module, data: TensorData, runtime: Runtime) -> float:
        """Share of `data`'s questions whose greedy answer matches the answer or an alias."""
        return float(np.mean(greedy_correct(self, model, data, self.accept, runtime))) if len(data) else float("nan")

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        forget = self.membership_scores(model, splits.forget, runtime, self.mia)
        holdout = self.membership_scores(model, splits.test, runtime, self.mia)
        neighbours, utility = self.related(splits)
        stats = forget["stats"]
        return {
            "forget_acc": self.accuracy(model, splits.forget, runtime),
            "neighbour_acc": self.accuracy(model, neighbours, runtime),
            "utility_acc": self.accuracy(model, utility, runtime),
            "forget_prob": answer_probability(forget["loss"]),
            "neighbour_prob": answer_probability(self.nll(model, neighbours, ANSWER, runtime)),
            "utility_prob": answer_probability(self.nll(model, utility, ANSWER, runtime)),
            "exact_memorization": float(np.mean(exact_memorization(stats["correct"], stats["mask"]))),
            "extraction_strength": float(np.mean(extraction_strength(stats["correct"], stats["mask"]))),
            **{f"mia_{name}_auc": mia_auc(forget[name], holdout[name]) for name in self.mia},
            **{k: v for name in self.mia
               for k, v in low_fpr_figures(-forget[name], -holdout[name], self.low_fpr, f"mia_{name}").items()},
        }

    def compare_to_oracle(self, model: nn.Module, oracle: nn.Module, splits: Splits,
                          runtime: Runtime) -> dict[str, float]:
        return {}  # no oracle: the oracle column is the base model (module doc)

    def judged_by(self, model: nn.Module, reference: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, float]:
        """Fluency of the greedy answers to the forget questions: perplexity under `reference` (the base model),
        word-repetition rate, and share of words found in no question or answer of the data."""
        answers = self.generate_answers(model, splits.forget, runtime, bounded=False)
        return {"forget_fluency_ppl": perplexity(self.nll(reference, self.with_answers(splits.forget, answers),
                                                          ANSWER, runtime)),
                "forget_repetition": repetition_rate(answers),
                "forget_nonword": nonword_rate(answers, self.vocabulary)}
