"""Forget-set builders. Indices always point into `data.train`, the very examples the original was
trained on (REFERENCE.md: the reference code drew the split from another seed's indices).

Where the train split carries a `group` tensor (e.g. the author of each fact), random forgetting picks
whole groups, so forgetting an author removes every fact about them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from unlearn.data.tensordata import Batch, DataBundle
from unlearn.errors import ConfigError
from unlearn.knobs import Range
from unlearn.runtime import Runtime


class TaskLike(Protocol):
    """What builders see of the run's task (an `unlearn.tasks.base.Task`; typed structurally so that this
    module, which the tasks import, imports no task). A builder that needs more of its task, e.g. an LLM
    task's answers, narrows the type in its own module."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor: ...

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch: ...


@dataclass
class Reference:
    """The trained original, for builders that choose F by how the model treats each example."""

    task: TaskLike
    model: nn.Module
    model_key: str          # cache key of the original: part of such a builder's own cache key
    runtime: Runtime


@dataclass
class ForgetSet:
    indices: np.ndarray                 # forget examples, indices into data.train (sorted)
    test_indices: np.ndarray | None     # test examples kept for TA (None: all of them)
    description: dict[str, Any]         # what the results row records about the set

    def retain_indices(self, n_train: int) -> np.ndarray:
        return np.setdiff1d(np.arange(n_train), self.indices)


class ForgetBuilder:
    """Chooses F. `check` runs before any training so bad settings fail fast.

    Builders with `needs_original = True` receive the trained original in `build` (and the set is then
    cached under the original's key too); the others receive None.
    """

    name = "builder"
    needs_original = False
    removes_classes: bool | None = False  # whole classes leave the data (None: known only once built)

    def check(self, data: DataBundle) -> None:
        """Raise ConfigError if this builder cannot produce a valid forget set for `data`."""

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        raise NotImplementedError

    # A request of the "added data" kind (DESIGN.md) appends its examples to train in `extend` (so the original
    # learns D ∪ F and the oracle, trained without F's indices, learns D) and may score what they did.
    def extend(self, data: DataBundle, seed: int) -> DataBundle:
        """The data the original is trained on: `data` itself, unless the request adds examples to train."""
        return data

    def evaluate(self, task: TaskLike, model: nn.Module, data: DataBundle, forget: ForgetSet,
                 runtime: Runtime) -> dict[str, float]:
        """Metrics of this kind of request on one model, beside the task's own (none by default)."""
        return {}

    def relative(self, metrics: dict[str, float], original: dict[str, float],
                 oracle: dict[str, float]) -> dict[str, float]:
        """Metrics of one model relative to the original's and the oracle's (none by default)."""
        return {}

    def cache_fields(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    # A validation request (method.select=best_val, `python -m unlearn tune`; docs/tuning.md) is drawn like the
    # reported request but shares none of its examples, so a checkpoint or a configuration chosen on it has never
    # seen the forget set the row reports.
    def check_validation(self, data: DataBundle) -> None:
        """Raise ConfigError if no validation request can be drawn beside this builder's request on `data` (before
        anything trains). By default none can: the builder does not know how to draw another request like its own."""
        raise self.no_validation()

    #: whether `validation` can draw a request (a builder that can overrides it and `check_validation`)
    draws_validation = False

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """A request drawn like `reported` (same kind and size) from what `reported` leaves, from `seed` (and the
        trained original, `reference`, for builders with `needs_original`). By default refused, as `check_validation`
        is (a builder that can draw one overrides both)."""
        raise self.no_validation()

    def no_validation(self) -> ConfigError:
        """The one line refusing a validation request of this builder's kind."""
        return ConfigError(f"forget={self.name} cannot draw a validation request like its own (method.select=best_val "
                           f"and `python -m unlearn tune` need one); use forget=random, class, concept, worst_case or worst_case_class")

    def gap_metrics(self, task_gap_metrics: tuple[str, ...]) -> tuple[str, ...]:
        """The metrics whose gaps to the oracle make Avg. Gap for this request: the task's, unless the request
        changes what some of them mean (added data)."""
        return task_gap_metrics


class RandomForget(ForgetBuilder):
    """A uniformly random `ratio` (or `count`) of the training examples, or of the groups if there are any."""

    name = "random"

    knobs = {"ratio": Range(0, 1, low_open=True, high_open=True, optional=True),
             "count": Range(1, integer=True, optional=True)}

    def __init__(self, ratio: float | None = 0.1, count: int | None = None):
        if count is None and ratio is None:
            raise ConfigError("random forgetting needs forget.ratio in (0, 1) or forget.count >= 1")
        if count is not None:
            if int(count) != count or count < 1:
                raise ConfigError(f"forget.count must be a positive integer, got {count}")
            ratio = None
        elif not 0 < float(ratio) < 1:
            raise ConfigError(f"forget.ratio must lie strictly between 0 and 1, got {ratio}")
        self.ratio = None if ratio is None else float(ratio)
        self.count = None if count is None else int(count)

    def _units(self, data: DataBundle) -> np.ndarray:
        """The things drawn at random: example ids, or group ids when the data is grouped."""
        if "group" in data.train.keys():
            groups = np.unique(data.train["group"].cpu().numpy())
            return groups[groups >= 0]  # negative groups are background knowledge no request removes (world facts)
        return np.arange(len(data.train))

    def _size(self, n_units: int) -> int:
        return self.count if self.count is not None else int(round(self.ratio * n_units))

    def check(self, data: DataBundle) -> None:
        n_units = len(self._units(data))
        size = self._size(n_units)
        unit = "groups" if "group" in data.train.keys() else "training examples"
        if size < 1:
            raise ConfigError(f"forget.ratio={self.ratio} of {n_units} {unit} selects nothing; raise the ratio")
        if size >= n_units:
            raise ConfigError(f"forgetting {size} of {n_units} {unit} leaves nothing to retain; "
                              f"use fewer than {n_units}")

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        units = self._units(data)
        rng = np.random.default_rng(seed)
        return self._forget_set(data, np.sort(rng.choice(units, size=self._size(len(units)), replace=False)))

    draws_validation = True

    def check_validation(self, data: DataBundle) -> None:
        """A second draw of the same size must fit beside the first and leave something to retain."""
        n_units = len(self._units(data))
        size = self._size(n_units)
        if 2 * size >= n_units:
            unit = "groups" if "group" in data.train.keys() else "training examples"
            raise ConfigError(f"a validation request of {size} {unit} disjoint from the reported {size} needs more than "
                              f"{2 * size} of them; {data.name!r} has {n_units}: lower forget.ratio/count")

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """As many units (examples, or groups) as `reported`, drawn from those it does not contain."""
        self.check_validation(data)
        units = self._units(data)
        taken = reported.description.get("groups") if "group" in data.train.keys() else reported.indices
        free = np.setdiff1d(units, np.asarray(taken))
        rng = np.random.default_rng(seed)
        forget = self._forget_set(data, np.sort(rng.choice(free, size=self._size(len(units)), replace=False)))
        forget.description["validation"] = True
        return forget

    def _forget_set(self, data: DataBundle, chosen: np.ndarray) -> ForgetSet:
        """The forget set of the chosen units (example ids, or group ids whose every example goes)."""
        if "group" in data.train.keys():
            groups = data.train["group"].cpu().numpy()
            indices = np.flatnonzero(np.isin(groups, chosen))
            description = {"builder": self.name, "ratio": self.ratio, "count": self.count,
                           "groups": chosen.tolist(), "size": int(len(indices))}
        else:
            indices = chosen
            description = {"builder": self.name, "ratio": self.ratio, "count": self.count, "size": int(len(indices))}
        return ForgetSet(indices=indices, test_indices=None, description=description)


class ClassForget(ForgetBuilder):
    """Every training example of the given classes; those classes also leave the test set used for TA."""

    name = "class"
    removes_classes = True

    def __init__(self, classes: Sequence[int] | int = (0,)):
        classes = [classes] if isinstance(classes, int) else list(classes)
        if not classes:
            raise ConfigError("forget.classes is empty; give at least one class id, e.g. forget.classes=[0]")
        if any(int(c) != c for c in classes):
            raise ConfigError(f"forget.classes must be integer class ids, got {classes}")
        self.classes = sorted({int(c) for c in classes})

    def _labels(self, data: DataBundle, split: str) -> np.ndarray:
        tensors = getattr(data, split)
        if "y" not in tensors.keys():
            raise ConfigError(f"class-wise forgetting needs class labels, and data {data.name!r} has none; "
                              f"use forget=random")
        return tensors["y"].cpu().numpy()

    def check(self, data: DataBundle) -> None:
        n_classes = int(data.info.get("num_classes", 0))
        labels = self._labels(data, "train")
        unknown = [c for c in self.classes if not 0 <= c < n_classes]
        if unknown:
            raise ConfigError(f"forget.classes={self.classes}: {unknown} not a class of {data.name!r}; "
                              f"valid ids are 0..{n_classes - 1}")
        if len(self.classes) >= n_classes:
            raise ConfigError(f"forget.classes covers all {n_classes} classes of {data.name!r}; nothing would remain")
        if not np.isin(labels, self.classes).any():
            raise ConfigError(f"no training example of {data.name!r} has a class in {self.classes}")

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        return self._forget_set(data, self.classes)

    def _forget_set(self, data: DataBundle, classes: list[int]) -> ForgetSet:
        indices = np.flatnonzero(np.isin(self._labels(data, "train"), classes))
        test_keep = np.flatnonzero(~np.isin(self._labels(data, "test"), classes))
        return ForgetSet(indices=indices, test_indices=test_keep,
                         description={"builder": self.name, "classes": classes, "size": int(len(indices))})

    draws_validation = True

    def check_validation(self, data: DataBundle) -> None:
        """As many other classes as the request names must exist (with training examples)."""
        self.check(data)
        others = self._others(data)
        if len(others) < len(self.classes):
            raise ConfigError(f"a validation request of {len(self.classes)} other class(es) than forget.classes="
                              f"{self.classes} cannot be drawn: {data.name!r} has only {len(others)} other class(es) "
                              f"with training examples")

    def _others(self, data: DataBundle) -> np.ndarray:
        present = np.unique(self._labels(data, "train"))
        return np.setdiff1d(present, self.classes)

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """As many classes as the request names, drawn from the other classes (they also leave the test set)."""
        self.check_validation(data)
        rng = np.random.default_rng(seed)
        classes = sorted(int(c) for c in rng.choice(self._others(data), size=len(self.classes), replace=False))
        forget = self._forget_set(data, classes)
        forget.description["validation"] = True
        return forget

