"""The data and the forget request: the data set on the device (loaded once, keyed by content) and the forget set
F a run works on, chosen once from the run's seed (and original, for builders that need it), or set by a scenario
(a stream's cumulative request)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from unlearn.cache import Cache, content_key
from unlearn.codehash import code_digest
from unlearn.config import build, target_of
from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle
from unlearn.eval.rmia import low_fpr_levels
from unlearn.pipeline.store import seed_stage
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task


class Request:
    """The data and the forget set of one experiment."""

    def __init__(self, cfg: DictConfig, task: Task, builder: ForgetBuilder, runtime: Runtime, cache: Cache):
        self.cfg, self.task, self.builder, self.runtime, self.cache = cfg, task, builder, runtime, cache
        self.seed = int(cfg.seed)
        self._data: tuple[DataBundle, str] | None = None
        self._forget: tuple[ForgetSet, str] | None = None
        self._task_request: ForgetSet | None = None  # what the task was last given (`use_request`), if not F itself

    def data(self) -> tuple[DataBundle, str]:
        """The data set on the device and its content key (loaded once per experiment)."""
        if self._data is None:
            # A request that adds data (RESTOR's corrupting documents) extends train before anything is keyed or
            # trained; the key hashes the content, so the original's key covers the added documents.
            data = self.builder.extend(build(self.cfg.data.source), derive_seed(self.seed, "forget"))
            data_key = content_key("data", code=code_digest(target_of(self.cfg.data.source)), content=data.fingerprint())
            data = data.to(self.runtime.device)
            if self.runtime.channels_last:
                for split in (data.train, data.val, data.test):
                    for name, tensor in split.tensors.items():
                        if tensor.dim() == 4:
                            split.tensors[name] = tensor.contiguous(memory_format=torch.channels_last)
            self.builder.check(data)
            # The FPR levels membership attacks report at: those the held-out split can resolve (before any training).
            self.task.low_fpr = low_fpr_levels(len(data.test), self.cfg.eval.get("low_fpr"))
            self.task.setup(data, self.cache, self.runtime, self.seed)
            self._data = data, data_key
        return self._data

    def forget_set(self, original: nn.Module | None, original_key: str | None) -> tuple[ForgetSet, str, bool]:
        """(F, its key, cached) for this run: chosen once, from the run's seed (and original, for builders that
        need it)."""
        if self._forget is not None:
            return (*self._forget, True)
        data, data_key = self.data()
        reference = Reference(self.task, original, original_key, self.runtime) if self.builder.needs_original else None
        key = content_key("forget", code=code_digest(type(self.builder), self.task.loss, self.task.fit),
                          data=data_key, builder=type(self.builder).__qualname__,
                          fields=self.builder.cache_fields(), seed=self.seed,
                          original=original_key if reference else None)
        seed_stage(self.seed, "forget")
        forget, cached = self.cache.get_or_compute(
            key, lambda: self.builder.build(data, derive_seed(self.seed, "forget"), reference), "forget set")
        self._forget = forget, key
        return forget, key, cached

    def set_forget(self, forget: ForgetSet, key: str, task_request: ForgetSet | None = None) -> None:
        """Use this forget set from now on (a scenario's request instead of the forget builder's, a validation
        request), and give the task the request it reads itself (`Task.use_request`: `task_request`, e.g. a stream
        step's own request where `forget` is the cumulative one; default `forget`)."""
        self._forget = forget, key
        self._task_request = task_request
        self.task.use_request(self.data()[0], task_request or forget)

    def validation_set(self, original: nn.Module | None = None, original_key: str | None = None
                       ) -> tuple[ForgetSet, str, bool]:
        """(V, its key, cached): the validation request, drawn like the run's forget set but disjoint from it, from
        the run's seed (docs/tuning.md); builders that choose by the original (worst-case) draw it with `original`.
        Its key hashes how it was drawn (data, builder, seed, and that original), not F's identity."""
        data, data_key = self.data()
        reported, _, _ = self.forget_set(original, original_key)
        needs = self.builder.needs_original
        reference = Reference(self.task, original, original_key, self.runtime) if needs else None
        key = content_key("validation-forget", code=code_digest(type(self.builder)), data=data_key,
                          builder=type(self.builder).__qualname__, fields=self.builder.cache_fields(), seed=self.seed,
                          original=original_key if needs else None)
        seed_stage(self.seed, "validation-forget")
        forget, cached = self.cache.get_or_compute(
            key, lambda: self.builder.validation(data, reported, derive_seed(self.seed, "validation"), reference),
            "validation request")
        return forget, key, cached

    @contextlib.contextmanager
    def using(self, forget: ForgetSet, key: str, task_request: ForgetSet | None = None) -> Iterator[None]:
        """Within the block, the request is `forget` (a validation run: the method's artifacts, such as its weight
        mask, are keyed by it, and a task that reads its request, a concept's, reads `task_request or forget`); the
        run's own request afterwards."""
        before, before_task = self._forget, self._task_request
        self.set_forget(forget, key, task_request)
        try:
            yield
        finally:
            if before is None:
                self._forget = None
            else:
                self.set_forget(*before, before_task)

    @property
    def forget(self) -> ForgetSet:
        return self._forget[0]

    @property
    def forget_key(self) -> str:
        return self._forget[1]

    def splits(self) -> Splits:
        return Splits.from_forget_set(self.data()[0], self.forget)
