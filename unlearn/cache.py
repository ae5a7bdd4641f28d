"""Content-addressed artifact store.

Every expensive, deterministic stage (data, original, forget set, oracle, reference metrics) is stored under
a key that hashes exactly the inputs it depends on: the config fields, and the code that makes it
(`code=`, a `unlearn.codehash.code_digest` of the stage's functions, so a fix to a metric recomputes the
reference metrics and a change to the training loop retrains). Writes go to a temp file that is renamed
into place, so a killed run never leaves a partial entry; a per-key file lock (the `filelock` library, on
every platform) makes two workers that need the same artifact compute it once. An entry that cannot be
loaded (truncated, or pickled by an incompatible library version) is dropped with a warning and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    if os.environ.get("UNLEARN_CACHE"):
        return Path(os.environ["UNLEARN_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "unlearn"


def _canonical(obj: Any) -> Any:
    """JSON-able, order-independent form of configs, arrays and tensors."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return digest_bytes(obj.detach().cpu().contiguous().numpy().tobytes(), str(obj.dtype), str(tuple(obj.shape)))
    if hasattr(obj, "tobytes") and hasattr(obj, "dtype"):  # numpy arrays
        return digest_bytes(obj.tobytes(), str(obj.dtype), str(obj.shape))
    return obj


def digest_bytes(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


def content_key(kind: str, *, code: str, **fields: Any) -> str:
    """Key of an artifact: its kind, the format version, the digest of the code that makes it, and the
    fields it depends on."""
    payload = json.dumps({"kind": kind, "v": FORMAT_VERSION, "code": code, **_canonical(fields)}, sort_keys=True,
                         default=str)
    return f"{kind}-{digest_bytes(payload)}"


class Cache:
    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def contains(self, key: str) -> bool:
        return self.enabled and self.path(key).exists()

    def load(self, key: str) -> Any | None:
        path = self.path(key)
        if not (self.enabled and path.exists()):
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated file, or an object an incompatible library version pickled
            log.warning("cache entry %s cannot be loaded (%s: %s); recomputing it", path.name, type(exc).__name__, exc)
            path.unlink(missing_ok=True)
            return None

    def save(self, key: str, value: Any) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(value, f)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _lock(self, key: str):
        if not self.enabled:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(self.root / f".{key}.lock"):
            yield

    def get_or_compute(self, key: str, compute: Callable[[], Any], what: str) -> tuple[Any, bool]:
        """Return (value, was_cached). Only one process computes a missing key; the others wait and load it."""
        value = self.load(key)
        if value is not None:
            log.info("%s: reusing cached %s", what, key)
            return value, True
        with self._lock(key):
            value = self.load(key)  # another worker may have finished it while we waited
            if value is not None:
                log.info("%s: reusing cached %s", what, key)
                return value, True
            log.info("%s: not cached, computing %s", what, key)
            value = compute()
            self.save(key, value)
            return value, False
