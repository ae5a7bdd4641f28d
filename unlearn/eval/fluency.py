"""Fluency of generated answers, without a downloaded classifier: a model that answers forget questions with
gibberish scores as "forgotten" on every memorisation metric, so the LM tables show how its answers read.

- `perplexity`: exp of the mean per-token NLL of the answers under a fixed reference LM (the harness uses the run's
  original θo, which knows the world's language; the real SmolLM2 where a run uses it);
- `repetition_rate`: the share of an answer's words that repeat an earlier word of it;
- `nonword_rate`: the share of an answer's words found in no text of the world (its vocabulary).
Each is averaged over answers; empty answers count as fully non-fluent (repetition and non-word rate 1).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

WORD = re.compile(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']")


def words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks of `text`."""
    return [w.lower() for w in WORD.findall(text)]


def vocabulary(texts: Iterable[str]) -> set[str]:
    """Every word (`words`) of `texts`: the reference vocabulary of `nonword_rate`."""
    return {w for text in texts for w in words(text)}


def repetition_rate(answers: Sequence[str]) -> float:
    """Mean over answers of 1 − distinct words / words (0: no word repeats; → 1: one word over and over)."""
    rates = []
    for text in answers:
        tokens = words(text)
        rates.append(1.0 - len(set(tokens)) / len(tokens) if tokens else 1.0)
    return float(np.mean(rates)) if rates else float("nan")


def nonword_rate(answers: Sequence[str], known: set[str]) -> float:
    """Mean over answers of the share of words not in `known` (0: every word is a word of the world)."""
    rates = []
    for text in answers:
        tokens = words(text)
        rates.append(float(np.mean([t not in known for t in tokens])) if tokens else 1.0)
    return float(np.mean(rates)) if rates else float("nan")


def perplexity(mean_nll: np.ndarray) -> float:
    """exp of the mean over answers of each answer's mean per-token NLL (N,) under the reference LM; NaN if none
    or not finite."""
    nll = np.asarray(mean_nll, dtype=np.float64)
    if nll.size == 0 or not np.all(np.isfinite(nll)):
        return float("nan")
    return float(np.exp(nll.mean()))
