"""RESTOR-style corruption: a forget request that *adds* data (DESIGN.md, "Forget requests"; reference/llm.md).

The documents state a wrong value for every fact of a `fraction` of the authors, each `docs_per_fact` times,
mixed with documents stating correct facts about other authors (a `mix` share of all documents). They are
appended to the facts' train split (`extend`), so the original learns the clean facts plus the documents and
the oracle — trained without the forget indices, which point at the documents — is the clean model.

A document is a question with a short answer, "{value}." (the facts data's paraphrase form, and its false
values' form), so it reuses the data's own tensors and tokenisation. The facts the documents corrupt are the
*affected facts*: the clean training examples of the corrupted authors (they stay in retain).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.eval.restor import match_accuracy, mean_log_prob, recovery
from unlearn.knobs import COUNT, Range

if TYPE_CHECKING:
    from torch import nn

    from unlearn.runtime import Runtime
    from unlearn.tasks.base import Task

ANSWER = ("input_ids", "attention_mask", "labels")
PARAPHRASE = ("paraphrase_ids", "paraphrase_mask", "paraphrase_labels")
PERTURBED = ("perturbed_ids", "perturbed_mask", "perturbed_labels")
NEEDED = ("group", *ANSWER, *PARAPHRASE, *PERTURBED, "prompt_ids")
INFO = "corruption"  # data.info key: what `extend` added, for `build` and `evaluate`


class CorruptFacts(ForgetBuilder):
    """Forget the corrupting documents added to the facts (RESTOR); its metrics are on the affected facts."""

    name = "corrupt"
    adds_data = True  # F is documents added to D, not a subset of it (a stream cannot draw such requests)
    knobs = {"fraction": Range(0, 1, low_open=True), "docs_per_fact": COUNT, "mix": Range(0, 1, high_open=True)}

    def gap_metrics(self, task_gap_metrics: tuple[str, ...]) -> tuple[str, ...]:
        """The membership attacks compare the documents with holdout question–answer items, another
        distribution, so their scores are reported but kept out of Avg. Gap; the affected facts' accuracies (the
        point of RESTOR) enter it instead."""
        kept = tuple(m for m in task_gap_metrics if not m.startswith("mia_"))
        return kept + ("restor_acc", "restor_corrupt_acc")

    def __init__(self, fraction: float = 0.2, docs_per_fact: int = 2, mix: float = 0.5):
        if not 0 < float(fraction) <= 1:
            raise ConfigError(f"forget.fraction (share of authors corrupted) must lie in (0, 1], got {fraction}")
        if int(docs_per_fact) != docs_per_fact or docs_per_fact < 1:
            raise ConfigError(f"forget.docs_per_fact must be an integer >= 1, got {docs_per_fact}")
        if not 0 <= float(mix) < 1:
            raise ConfigError(f"forget.mix (share of documents stating correct facts) must lie in [0, 1), got {mix}")
        self.fraction, self.docs_per_fact, self.mix = float(fraction), int(docs_per_fact), float(mix)

    def check(self, data: DataBundle) -> None:
        missing = [k for k in NEEDED if k not in data.train.keys()]
        if missing:
            raise ConfigError(f"forget=corrupt needs question-answer facts with false answers per author (data=facts); "
                              f"data {data.name!r} lacks {missing}")

    # ---- the added documents ----------------------------------------------------------------------
    def extend(self, data: DataBundle, seed: int) -> DataBundle:
        self.check(data)
        train, rng = data.train, np.random.default_rng(seed)
        groups = train["group"].cpu().numpy()
        authors = np.unique(groups[groups >= 0])  # negative groups are world knowledge, never corrupted
        corrupted = np.sort(rng.choice(authors, size=max(1, round(self.fraction * len(authors))), replace=False))
        affected = np.flatnonzero(np.isin(groups, corrupted))
        wrong = rng.integers(train["perturbed_ids"].shape[1], size=len(affected))  # one false value per fact
        facts = train.subset(affected)
        rows = torch.arange(len(affected))
        wrong_t = torch.as_tensor(wrong)
        corrupt = _answered(facts, {dst: facts[src][rows, wrong_t] for src, dst in zip(PERTURBED, ANSWER)})
        docs = [corrupt] * self.docs_per_fact
        others = np.flatnonzero(~np.isin(groups, corrupted) & (groups >= 0))  # other *authors'* facts
        n_correct = round(self.mix / (1 - self.mix) * len(affected) * self.docs_per_fact) if len(others) else 0
        if n_correct:
            chosen = np.sort(rng.choice(others, size=n_correct, replace=n_correct > len(others)))
            right = train.subset(chosen)
            docs.append(_answered(right, {dst: right[src] for src, dst in zip(PARAPHRASE, ANSWER)}))
        added = TensorData(**{k: torch.cat([train[k], *(d[k] for d in docs)]) for k in train.keys()})
        info = data.info | {INFO: {"start": len(train), "authors": corrupted.tolist(), "affected": affected.tolist(),
                                   "wrong": wrong.tolist(), "correct_docs": int(n_correct)}}
        return DataBundle(data.name, added, data.val, data.test, info)

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        added = self._added(data)
        indices = np.arange(added["start"], len(data.train))
        return ForgetSet(indices=indices, test_indices=None, description={
            "builder": self.name, "fraction": self.fraction, "docs_per_fact": self.docs_per_fact, "mix": self.mix,
            "authors": added["authors"], "affected_facts": len(added["affected"]), "size": int(len(indices))})

    def _added(self, data: DataBundle) -> dict[str, Any]:
        if INFO not in data.info:
            raise ConfigError("forget=corrupt: the data carries no corrupting documents (extend was not applied)")
        return data.info[INFO]

    # ---- RESTOR's metrics -------------------------------------------------------------------------
    def evaluate(self, task: "Task", model: "nn.Module", data: DataBundle, forget: ForgetSet,
                 runtime: "Runtime") -> dict[str, float]:
        """On the affected facts: accuracy of greedy answers against the correct value (`restor_acc`) and against
        the corrupted one (`restor_corrupt_acc`), and the mean per-token log-prob of each answer."""
        added = self._added(data)
        facts = data.train.subset(added["affected"])
        device = facts["perturbed_ids"].device
        rows, wrong = torch.arange(len(facts), device=device), torch.as_tensor(added["wrong"], device=device)
        corrupted = TensorData(**{dst: facts[src][rows, wrong]
                                  for src, dst in zip(PERTURBED, ANSWER)})
        answers = task.generate_answers(model, facts, runtime)
        correct_values = task.true_answers(TensorData(labels=facts["paraphrase_labels"]))
        wrong_values = task.true_answers(corrupted)
        return {
            "restor_acc": match_accuracy(answers, [[v] for v in correct_values]),
            "restor_corrupt_acc": match_accuracy(answers, [[v] for v in wrong_values]),
            "restor_logp_correct": mean_log_prob(task.nll(model, facts, PARAPHRASE, runtime)),
            "restor_logp_corrupt": mean_log_prob(task.nll(model, corrupted, ANSWER, runtime)),
        }

    def relative(self, metrics: dict[str, float], original: dict[str, float],
                 oracle: dict[str, float]) -> dict[str, float]:
        """Recovery of the affected facts' accuracy: the original is the corrupted model, the oracle the clean one."""
        return {"recovery": recovery(metrics["restor_acc"], original["restor_acc"], oracle["restor_acc"])}


def _answered(facts: TensorData, answer: dict[str, torch.Tensor]) -> TensorData:
    """The same questions (and every other tensor) with another answer."""
    return TensorData(**(facts.tensors | answer))
