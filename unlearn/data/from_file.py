"""A published forget set, read from a JSON file: a list of train indices, or an object with "indices"
(and optionally "test_indices" and "description"), which is what every run saves as forget_indices.json."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle
from unlearn.errors import ConfigError


def _index_array(values: Any, what: str, path: Path) -> np.ndarray:
    """A list of distinct non-negative integers as an int64 array, or one ConfigError saying what is wrong."""
    if not isinstance(values, list):
        raise ConfigError(f"{what} in {path} must be a JSON list of integers, got {type(values).__name__}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        raise ConfigError(f"{what} in {path} must be integers; found {bad[:5]}")
    indices = np.asarray(values, dtype=np.int64)
    if (indices < 0).any():
        raise ConfigError(f"{what} in {path} must be non-negative; found {indices[indices < 0][:5].tolist()}")
    unique, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{what} in {path} repeat {unique[counts > 1][:5].tolist()}; each index must appear once")
    return unique


class FromFileForget(ForgetBuilder):
    """The training examples listed in `path` (indices into data.train, the split the original learns)."""

    name = "from_file"
    removes_classes = None

    def __init__(self, path: str | None = None):
        if not path:
            raise ConfigError("forget=from_file needs forget.path=<a JSON file of train indices>")
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"forget.path={path!r}: no such file")
        raw = file.read_bytes()
        try:
            content = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"forget.path={path!r} is not valid JSON ({exc})") from None
        if isinstance(content, dict):
            if "indices" not in content:
                raise ConfigError(f"{file} holds a JSON object without \"indices\"; expected a list of train "
                                  f"indices or {{\"indices\": [...]}} (the forget_indices.json of a run)")
            test_indices = content.get("test_indices")
            self._indices = _index_array(content["indices"], "\"indices\"", file)
            self._test_indices = None if test_indices is None else _index_array(test_indices, "\"test_indices\"", file)
            self._source = content.get("description")
        else:
            self._indices, self._test_indices, self._source = _index_array(content, "the list", file), None, None
        if len(self._indices) == 0:
            raise ConfigError(f"{file} lists no indices; a forget set needs at least one example")
        self.path = str(file)
        # The content, not just the path, keys the cached set: an edited file is a different forget set.
        self.sha256 = hashlib.sha256(raw).hexdigest()

    def check(self, data: DataBundle) -> None:
        n_train, n_test = len(data.train), len(data.test)
        if self._indices[-1] >= n_train:
            raise ConfigError(f"{self.path} lists index {int(self._indices[-1])}, but {data.name!r} has only "
                              f"{n_train} training examples (valid: 0..{n_train - 1})")
        if len(self._indices) >= n_train:
            raise ConfigError(f"{self.path} lists all {n_train} training examples of {data.name!r}; "
                              f"nothing would be left to retain")
        if self._test_indices is not None and len(self._test_indices) and self._test_indices[-1] >= n_test:
            raise ConfigError(f"{self.path} lists test index {int(self._test_indices[-1])}, but {data.name!r} "
                              f"has only {n_test} test examples (valid: 0..{n_test - 1})")

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        description = {"builder": self.name, "path": self.path, "size": int(len(self._indices))}
        if self._source is not None:
            description["source"] = self._source
        return ForgetSet(indices=self._indices.copy(), test_indices=None if self._test_indices is None
                         else self._test_indices.copy(), description=description)
