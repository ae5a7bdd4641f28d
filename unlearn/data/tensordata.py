"""Tensors that share a first dimension: the one data container every task uses.

Images and labels, token ids and label masks, latents and classes: each split of each modality is a
`TensorData`, so subsetting a forget set and batching are written once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


class TensorData:
    def __init__(self, **tensors: torch.Tensor):
        if not tensors:
            raise ValueError("TensorData needs at least one tensor")
        lengths = {name: len(t) for name, t in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors disagree on length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def keys(self):
        return self.tensors.keys()

    def subset(self, indices: np.ndarray | torch.Tensor) -> "TensorData":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TensorData(**{k: v[idx.to(v.device)] for k, v in self.tensors.items()})

    def to(self, device: torch.device | str) -> "TensorData":
        return TensorData(**{k: v.to(device) for k, v in self.tensors.items()})

    def batches(self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Batch]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield {k: v[idx.to(v.device)] for k, v in self.tensors.items()}

    def batch(self, indices: torch.Tensor) -> Batch:
        return {k: v[indices.to(v.device)] for k, v in self.tensors.items()}


@dataclass
class DataBundle:
    """A data set as the pipeline sees it: train (what the original learns), val, test, and facts about it."""

    name: str
    train: TensorData
    val: TensorData
    test: TensorData
    info: dict[str, Any] = field(default_factory=dict)
    # Evaluation-only sets a benchmark ships beside its splits (TOFU's perturbed sets, MUSE's VerbMem prompts, WMDP's
    # questions): never trained on, read by the benchmark's task.
    extra: dict[str, TensorData] = field(default_factory=dict)

    def to(self, device) -> "DataBundle":
        return DataBundle(self.name, self.train.to(device), self.val.to(device), self.test.to(device), self.info,
                          {name: part.to(device) for name, part in self.extra.items()})

    def fingerprint(self) -> dict[str, Any]:
        """Content of every split, for cache keys: the same data from any path gives the same key."""
        splits = {split: dict(getattr(self, split).tensors) for split in ("train", "val", "test")} | {"info": self.info}
        return splits | ({"extra": {name: dict(part.tensors) for name, part in self.extra.items()}} if self.extra else {})
