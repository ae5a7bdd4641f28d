"""Small tables for a terminal and for pages: cells, Markdown rendered through pandas (tabulate), wide tables
split to a width, and what a metric's name means (`GLOSSARY`: its unit and a one-line meaning).

The end-of-run summary (`report/row.py`), `compare`'s Markdown and the HTML report all format through here, so a
number reads the same everywhere.
"""
from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd

#: characters per line the printed tables keep to (a normal terminal)
WIDTH = 120
#: a metric computed on an attacked model is named `<attack>.<metric>` (`relearn.UA`); attack names are lower-case
#: words (no digits), which keeps `mia_loss_tpr_0.1pct` and the `Avg.Gap` column names of their own
ATTACKED = re.compile(r"^([a-z_]+)\.(.+)$")


def fmt(value: Any, digits: int = 2) -> str:
    """A cell: floats to `digits` decimals, except non-zero magnitudes that would round to 0 (a p-value of 3e-5,
    a TPR of 0.002), which keep two significant digits in scientific notation; None is empty."""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 0.5 * 10 ** -digits:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return "" if value is None else str(value)


def render(frame: pd.DataFrame) -> str:
    """A DataFrame of cells as a GitHub Markdown table (every cell as given: no number parsing)."""
    return frame.to_markdown(index=False, tablefmt="github", stralign="left", disable_numparse=True)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return render(pd.DataFrame([[fmt(c) for c in row] for row in rows], columns=list(headers)))


def split(frame: pd.DataFrame, keep: Sequence[str], width: int = WIDTH) -> list[pd.DataFrame]:
    """`frame`'s columns in consecutive groups whose Markdown (`render`) is at most `width` characters a line,
    each group led by the `keep` columns (the row labels). A column too wide to fit beside `keep` gets a group
    of its own (the only case a line exceeds `width`). Columns keep their order; every column not in `keep`
    appears in exactly one group."""
    keep = [c for c in keep if c in frame]
    # tabulate pads each column on its own, so a table's line is 1 + the sum over its columns of (line − 1)
    cost = {c: len(render(frame[[c]]).splitlines()[0]) - 1 for c in frame}
    groups: list[list[str]] = []
    used = width
    for column in (c for c in frame if c not in keep):
        if groups and used + cost[column] <= width:
            groups[-1].append(column)
            used += cost[column]
        else:
            groups.append([column])
            used = 1 + sum(cost[c] for c in keep) + cost[column]
    return [frame[[*keep, *group]] for group in groups] or [frame[keep]]


def split_markdown(frame: pd.DataFrame, keep: Sequence[str], width: int = WIDTH) -> str:
    """`render` of each part of `split(frame, keep, width)`, a blank line between them."""
    return "\n\n".join(render(part) for part in split(frame, keep, width))


def wrap(text: str, width: int = WIDTH, indent: str = "") -> str:
    """`text` wrapped at `width` (words longer than a line are not broken: a path or a command stays whole)."""
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def attack_of(name: str) -> str | None:
    """The attack a metric's name says it was computed after (`relearn.UA` → relearn), else None."""
    match = ATTACKED.match(name)
    return match.group(1) if match else None


def base_name(name: str) -> str:
    """The task's metric an attacked metric reports (`relearn.UA` → UA); other names as they are."""
    match = ATTACKED.match(name)
    return match.group(2) if match else name


@dataclass(frozen=True)
class Term:
    """A family of metric names (`pattern`, matched against the whole name with any attack prefix removed),
    their unit, a one-line meaning, and the task kinds it reads so for (empty: any)."""
    pattern: str
    unit: str
    meaning: str
    tasks: tuple[str, ...] = ()
    family: str = ""  # "population": computed over eval.oracles=N models of each role

    def matches(self, name: str, task: str | None) -> bool:
        applies = not self.tasks or task is None or task in self.tasks
        return applies and re.fullmatch(self.pattern, base_name(name)) is not None


PERCENT, FRACTION, SECONDS, NATS = "%", "0–1", "s", "nats"
GLOSSARY: tuple[Term, ...] = (
    # image classification (SalUn's four and their neighbours)
    Term("UA", PERCENT, "unlearning accuracy: 100 − accuracy on the forget set", ("classification",)),
    Term("RA", PERCENT, "remaining accuracy: accuracy on the retain set", ("classification",)),
    Term("TA", PERCENT, "test accuracy", ("classification",)),
    Term("MIA", PERCENT, "MIA-Efficacy: percent of forget examples a confidence-based membership attack (SVC) "
                         "calls non-members (higher: more forgotten)", ("classification",)),
    Term("mia_(m_)?entropy", PERCENT, "MIA-Efficacy with the (modified) entropy of the prediction as the attack's "
                                      "feature"),
    # generators
    Term("UA", PERCENT, "percent of forget-class generations the judge does not recognise as that class",
         ("diffusion",)),
    Term("retain_acc", PERCENT, "percent of the other classes' generations the judge recognises as their class"),
    Term("UA", PERCENT, "percent of target-prompt generations the judge does not assign the erased concept", ("t2i",)),
    Term("UA_(held_out|synonym)", PERCENT, "UA on prompts of a template held out of training / naming the concept "
                                           "by a synonym"),
    Term("IRA", PERCENT, "in-domain retain accuracy: other values of the concept's axis still generated right"),
    Term("CRA", PERCENT, "cross-domain retain accuracy: the other axes still generated right"),
    Term("in_prompt_retain", PERCENT, "the other axes of the target prompts still generated right"),
    Term("neighbour_retain", PERCENT, "the concept's nearest neighbour still generated right"),
    Term("gen_acc_\\w+", PERCENT, "accuracy of the judge on that axis of generations of canonical prompts"),
    Term("fd", "", "Fréchet distance between the judge's features of generations and of real test images "
                   "(lower: closer)"),
    Term("(forget|retain)_mse", "", "denoising ε-MSE on the forget / retain set"),
    Term("pre_ASR", PERCENT, "attack success rate before the attack: target generations judged to show the concept"),
    Term("ASR", PERCENT, "attack success rate: target generations showing the concept before or after the attack "
                         "(lower: more robust erasure)"),
    # membership inference and closeness to the oracle
    Term("mia_\\w+_auc", FRACTION, "AUC of a membership attack (loss, zlib, min-k, ...) telling forget from test "
                                   "examples (0.5: chance)"),
    Term("mia_\\w+_tpr_[\\d.]+pct", FRACTION, "that attack's true-positive rate at the false-positive rate named"),
    Term("kl_(forget|retain|test)(_p95)?", NATS, "KL(model ‖ oracle) of the predictive distributions per example: "
                                                 "mean (or 95th percentile) over the split"),
    # populations (eval.oracles=N)
    Term("klom_\\w+", NATS, "KLoM: per-example KL between the margin distributions of N unlearned models and N "
                            "oracles; mean (or 95th percentile) over the split", family="population"),
    Term("lira_\\w+", FRACTION, "LiRA membership attack over the population: AUC / TPR at 1% FPR", family="population"),
    Term("rmia(_original|_oracle)?_\\w+", FRACTION, "RMIA membership attack against the unlearned model (original, "
                                                    "oracle): AUC / TPR at low FPR", family="population"),
    Term("eps_(score|forgetting)", "", "NeurIPS 2023 competition score from per-example (ε, δ) estimates "
                                       "(higher: closer to the oracles)", family="population"),
    # language models
    Term("(forget|retain|world)_prob", FRACTION, "TOFU: per-token probability of the answer, mean over questions"),
    Term("(forget|retain|world)_rouge", FRACTION, "TOFU: ROUGE-L recall of the generated answer"),
    Term("(forget|retain|world)_truth_ratio", FRACTION, "TOFU truth ratio: preference of the true answer over "
                                                        "false ones"),
    Term("forget_quality", FRACTION, "TOFU forget quality: p-value of a KS test between the model's and the "
                                     "retrained model's forget truth ratios (1: the same)"),
    Term("model_utility", FRACTION, "TOFU model utility: harmonic mean of retain and world probability, ROUGE and "
                                    "truth ratio"),
    Term("privleak", PERCENT, "MUSE PrivLeak: relative gap of the min-k membership AUC to the retrained model's "
                              "(0: none)"),
    Term("exact_memorization|extraction_strength", FRACTION, "share of the answer's tokens the model reproduces "
                                                             "(exactly / from the shortest prefix)"),
    Term("verbmem_f|knowmem_[fr]", FRACTION, "MUSE VerbMem / KnowMem: ROUGE-L F1 of continuations / answers"),
    Term("\\w+_fluency_ppl", "", "perplexity of the answers under the original model (fluency)"),
    Term("\\w+_(repetition|nonword)", FRACTION, "share of answer words that repeat / that are no word of the world"),
    Term("restor_\\w+|recovery", "", "RESTOR: accuracy and log-probability on the corrupted facts; recovery toward "
                                     "the clean model (1: fully)"),
    # streams and costs
    Term("earlier_\\w+", "", "the metric on the requests of earlier steps (does forgetting hold?)"),
    Term("acc_(f|r|old)|drop_f|h_mean", PERCENT, "accuracy on forgotten / remaining / earlier classes, the drop on the "
                                                 "forgotten, and the H-Mean of drop and remaining accuracy"),
    Term("sparsity", FRACTION, "share of the weights that are zero"),
    Term("(cum_)?RTE(_\\w+)?_s|cost_s", SECONDS, "run time: the method's (cumulative over a stream's steps), or the "
                                                "attack's search"),
    Term("Avg\\.Gap", "", "mean over the gap metrics of |metric − Retrain's|, in the metrics' units (lower: closer to "
                          "Retrain)"),
)


def term(name: str, task: str | None = None) -> Term | None:
    """The glossary entry of a metric's name (an attacked metric reads as its base metric), else None."""
    return next((t for t in GLOSSARY if t.matches(name, task)), None)


def unit(name: str, task: str | None = None) -> str:
    found = term(name, task)
    return found.unit if found else ""


def units_note(names: Iterable[str], task: str | None = None) -> str:
    """'units: % UA, RA; s RTE_s' for the names with a known unit ('' for none). Names that all carry one attack
    prefix are listed without it."""
    names = list(names)
    by_unit: dict[str, list[str]] = {}
    for name in names:
        if unit(name, task):
            by_unit.setdefault(unit(name, task), []).append(name)
    if not by_unit:
        return ""
    prefixes = {attack_of(n) for n in names}
    shown = base_name if len(prefixes) == 1 and None not in prefixes else (lambda n: n)
    return "units: " + "; ".join(f"{u} {', '.join(map(shown, members))}" for u, members in by_unit.items())
