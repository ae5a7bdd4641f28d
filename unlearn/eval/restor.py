"""RESTOR's knowledge-recovery metrics [Rezaei et al., TMLR 2025] as pure functions (reference/llm.md, "RESTOR").

A clean model knows facts; corrupting documents teach wrong values for some of them; unlearning the documents
*forgets* if the corrupted answers lose probability and *restores* if accuracy on the affected facts returns
toward the clean model's.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from unlearn.eval.checks import as_array, nan_if_not_finite


def _normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "Lima." and "lima" compare equal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def alias_match(predictions: Sequence[str], aliases: Sequence[Sequence[str]]) -> np.ndarray:
    """Per example, whether the greedy answer states the fact: it equals one of the fact's aliases or contains one
    as whole words (RESTOR's offline judging: exact or alias match), after `_normalise`.

    `predictions` holds N strings, `aliases` N non-empty lists of strings; returns a bool array of shape (N,).
    Raises ValueError when the lengths differ or an example has no alias."""
    if len(predictions) != len(aliases):
        raise ValueError(f"{len(predictions)} predictions for {len(aliases)} alias lists")
    out = np.zeros(len(predictions), dtype=bool)
    for i, (prediction, names) in enumerate(zip(predictions, aliases)):
        if not names:
            raise ValueError(f"example {i} has no alias to match")
        said = f" {_normalise(prediction)} "
        out[i] = any(f" {_normalise(name)} " in said for name in names if _normalise(name))
    return out


def match_accuracy(predictions: Sequence[str], aliases: Sequence[Sequence[str]]) -> float:
    """Share of greedy answers matching one of their aliases (`alias_match`); NaN for no examples."""
    hits = alias_match(predictions, aliases)
    return float(hits.mean()) if hits.size else float("nan")


@nan_if_not_finite
def mean_log_prob(nll: np.ndarray) -> float:
    """Mean over examples of an answer's mean per-token log-probability (= −mean token NLL), in nats per token.
    `nll` has shape (N,); NaN for no examples or a non-finite entry."""
    nll = as_array(nll, "nll", ("N",))
    return float(-nll.mean()) if nll.size else float("nan")


@nan_if_not_finite
def recovery(acc_unlearned: float, acc_corrupted: float, acc_clean: float) -> float:
    """(acc_unlearned − acc_corrupted) / (acc_clean − acc_corrupted): 0 = still as corrupted as the corrupted
    model, 1 = back to the clean model's accuracy (above 1 or below 0 is possible). NaN when the corruption did
    not change the accuracy (denominator 0), or on non-finite input."""
    gap = acc_clean - acc_corrupted
    return float((acc_unlearned - acc_corrupted) / gap) if gap != 0 else float("nan")
