"""Refusal rules as data: (condition, reason) pairs read top to bottom, instead of nested conditionals."""
from __future__ import annotations

from typing import Callable, Sequence

Rule = tuple[Callable[[], bool], str]


def first_reason(rules: Sequence[Rule]) -> str | None:
    """The reason of the first rule whose condition holds (conditions are called in order, lazily); None if none."""
    for holds, reason in rules:
        if holds():
            return reason
    return None
