"""Declared ranges of every configurable knob, checked when a config node is built — before anything trains.

A class (or function) that Hydra builds declares `knobs = {"name": Range(...) | OneOf(...)}`; declarations are
merged along the class hierarchy (a subclass may narrow a parent's). `unlearn.config.build` checks every
declared key of the node against its knob and raises one ConfigError naming the key, the value and the
valid range, so `method=salun method.mask_ratio=1.5` fails in milliseconds instead of after training the
original and the oracle. `tests/test_knobs.py` walks every yaml of every group and checks that each
numeric knob is declared and that a value just outside its range is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from unlearn.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """A number in an interval. `None` bounds are open-ended; `integer` requires a whole number;
    `optional` lets the knob be null (e.g. `count: null` means "use ratio instead")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    optional: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            where = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            where = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            where = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            where = "(any finite value)"
        return f"{kind} {where}" + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and int(value) != value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def outside(self) -> Any:
        """A value this range refuses (for tests): just below the lower bound, else just above the upper."""
        step = 1 if self.integer else 1e-3
        if self.low is not None:
            return self.low if self.low_open else self.low - step
        if self.high is not None:
            return self.high if self.high_open else self.high + step
        return float("nan")


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of names (an optimizer, a divergence, a mask kind)."""

    choices: tuple
    optional: bool = False

    def __init__(self, choices: Iterable, optional: bool = False):
        object.__setattr__(self, "choices", tuple(choices))
        object.__setattr__(self, "optional", optional)

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices)) + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        return (value is None and self.optional) or value in self.choices

    def outside(self) -> Any:
        return "no-such-" + "-".join(map(str, self.choices))[:40]


Knob = Range | OneOf

# The knobs most gradient-based recipes share (training.OptimConfig and methods.base.GradientMethod).
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)                      # [0, 1]
OPEN_FRACTION = Range(0, 1, low_open=True, high_open=True)   # (0, 1)
COUNT = Range(1, integer=True)              # >= 1
NON_NEGATIVE_INT = Range(0, integer=True)   # >= 0


def declared_knobs(target: Any) -> dict[str, Knob]:
    """The knobs a class (merged along its MRO, subclasses last) or a function declares."""
    merged: dict[str, Knob] = {}
    for klass in reversed(getattr(target, "__mro__", (target,))):
        merged.update(vars(klass).get("knobs", {}) if isinstance(klass, type) else getattr(klass, "knobs", {}))
    return merged


def check_knobs(target: Any, values: Mapping[str, Any], where: str) -> None:
    """Raise ConfigError for the first declared knob in `values` that is out of its range."""
    knobs = declared_knobs(target)
    for name, value in values.items():
        knob = knobs.get(name)
        if knob is not None and not knob.accepts(value):
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{name}={value!r} is out of range: it must be {knob.describe()}")


def declare(**knobs: Knob):
    """Decorator declaring the knobs of a function Hydra builds (a data source, a model factory)."""

    def mark(function):
        function.knobs = dict(knobs)
        return function

    return mark
