"""Content-addressed artifact store, safe to share between jobs, machines and people.

Every expensive, deterministic stage (data, original, forget set, oracle, reference metrics, population members) is
stored under a key that hashes exactly the inputs it depends on: the config fields, and the code that makes it
(`code=`, a `unlearn.codehash.code_digest` of the stage's functions, so a fix to a metric recomputes the reference
metrics and a change to the training loop retrains).

The contract on a shared folder (docs/cluster.md):
- **Atomic writes.** An entry is written to a temp file in the cache folder, flushed to disk (fsync) and renamed
  into place, so a reader sees a whole entry or none, and a job killed mid-write leaves at most a `.*.tmp` file,
  which is never read.
- **One computation per key.** A per-key file lock (the `filelock` library: `flock`, which Linux NFS clients
  emulate with byte-range locks the server arbitrates, so it holds across machines on NFSv4, or NFSv3 with lockd;
  not on a mount with `nolock` or `local_lock=flock|all`) makes the first job that needs an artifact compute it
  while the others wait, then load it. Where locks do not reach other machines, two jobs may both compute an
  artifact: wasted time, never a wrong entry (both write the same deterministic content, atomically).
- **Loading never runs code.** An entry is one safetensors file: its tensors (and numpy arrays) as safetensors
  tensors, everything else as JSON in the file's metadata, with a small typed encoding (tuples, non-finite floats,
  numpy scalars, dicts with non-string keys, and the dataclasses in `VALUE_TYPES`, rebuilt field by field).
  Nothing is unpickled and no name read from a file is imported or called, so a crafted entry in a shared folder
  is refused (and recomputed), never executed. Entries of the pickle format (`.pt`, format 1) are never read.

An entry that cannot be loaded (truncated, crafted, of another format) is recomputed with a warning and replaced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from unlearn.errors import ConfigError

log = logging.getLogger(__name__)

# 2: safetensors + JSON entries (1 was torch.save's pickle; its keys differ, so its `.pt` files are never read).
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
# The value types the pipeline caches beyond JSON, tensors and numpy, by the name an entry gives them. An entry can
# only pick among these; a class is imported from this table (code), never from the entry.
VALUE_TYPES: dict[str, tuple[str, str]] = {"ForgetSet": ("unlearn.data.forget", "ForgetSet")}
# The file lock of each lock path in this process, shared by every Cache on that folder, so that a lock held by this
# process is re-entered, not waited on (flock would make a second descriptor of the same process wait on the first).
_LOCKS: dict[str, FileLock] = {}


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


# ---- the entry format ------------------------------------------------------------------------------------------
class UnstorableValue(TypeError):
    """A value holds a type the entry format does not store (not JSON, a tensor, a numpy value or a VALUE_TYPES
    dataclass)."""


class BadEntry(ValueError):
    """An entry file that is not a valid entry of this format (truncated, crafted, or of another version)."""


def encode(value: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(a JSON-able tree, the tensors it names): tensors and numpy arrays by index; tuples, non-finite floats, numpy
    scalars, dicts whose keys are not plain strings and VALUE_TYPES dataclasses as one-key tagged objects
    {"__tag__": ...}. OmegaConf containers are stored as the plain containers they resolve to.
    Raises UnstorableValue naming the path of the first value of another type."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    names = {cls: name for name, cls in ((n, _value_type(n)) for n in VALUE_TYPES)}

    def tensor(t: torch.Tensor) -> str:
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():  # safetensors refuses tensors that share memory (tied weights, views)
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        name = str(len(tensors))
        tensors[name] = t
        return name

    def enc(v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.generic):  # before int/float: np.float64 is a float; its type comes back too
            if v.dtype.kind not in "biuf":
                raise UnstorableValue(f"{where}: numpy scalar of dtype {v.dtype} cannot be cached")
            return {"__npscalar__": [v.dtype.str, enc(v.item(), where)]}
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(v, torch.Tensor):
            return {"__tensor__": tensor(v)}
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise UnstorableValue(f"{where}: numpy array of dtype {v.dtype} cannot be cached")
            native = v.astype(v.dtype.newbyteorder("="), copy=False)
            return {"__ndarray__": [tensor(torch.from_numpy(np.ascontiguousarray(native))), v.dtype.str]}
        if isinstance(v, (DictConfig, ListConfig)):
            return enc(OmegaConf.to_container(v, resolve=True), where)
        if isinstance(v, tuple):
            return {"__tuple__": [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [enc(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: enc(x, f"{where}.{k}") for k, x in v.items()}
            return {"__dict__": [[enc(k, f"{where}<key>"), enc(x, f"{where}[{k!r}]")] for k, x in v.items()]}
        if dataclasses.is_dataclass(v) and type(v) in names:
            return {"__dataclass__": [names[type(v)], {f.name: enc(getattr(v, f.name), f"{where}.{f.name}")
                                                       for f in dataclasses.fields(v)}]}
        raise UnstorableValue(f"{where}: a {type(v).__module__}.{type(v).__qualname__} cannot be cached (the entry "
                              f"format stores JSON values, tensors, numpy values and {sorted(VALUE_TYPES)})")

    return enc(value, "value"), tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The value `encode` gave (tree, tensors); raises BadEntry for anything else."""
    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        tags = [k for k in v if k.startswith("__")]
        if not tags:
            return {k: dec(x) for k, x in v.items()}
        if len(v) != 1 or tags[0] not in DECODERS:
            raise BadEntry(f"unknown tag in {sorted(v)[:3]}")
        return DECODERS[tags[0]](v[tags[0]])

    def named(name: Any) -> torch.Tensor:
        if not isinstance(name, str) or name not in tensors:
            raise BadEntry(f"the entry names tensor {name!r}, which it does not hold")
        return tensors[name]

    def ndarray(spec: list) -> np.ndarray:
        name, dtype = spec
        array = named(name).numpy()
        if np.dtype(dtype).kind not in "biuf":
            raise BadEntry(f"numpy dtype {dtype!r}")
        return array.astype(np.dtype(dtype), copy=False)

    def npscalar(spec: list) -> np.generic:
        dtype, value = spec
        if np.dtype(dtype).kind not in "biuf":
            raise BadEntry(f"numpy dtype {dtype!r}")
        return np.dtype(dtype).type(dec(value))

    def dataclass(spec: list) -> Any:
        name, fields = spec
        if name not in VALUE_TYPES or not isinstance(fields, dict):
            raise BadEntry(f"value type {name!r} is not one the cache stores ({sorted(VALUE_TYPES)})")
        cls = _value_type(name)
        if set(fields) != {f.name for f in dataclasses.fields(cls)}:
            raise BadEntry(f"{name} fields {sorted(fields)}")
        return cls(**{k: dec(x) for k, x in fields.items()})

    def nonfinite(text: str) -> float:
        if text not in ("nan", "inf", "-inf"):
            raise BadEntry(f"float {text!r}")
        return float(text)

    DECODERS: dict[str, Callable[[Any], Any]] = {
        "__tensor__": named, "__ndarray__": ndarray, "__npscalar__": npscalar, "__float__": nonfinite,
        "__tuple__": lambda items: tuple(dec(x) for x in items),
        "__dict__": lambda pairs: {_hashable(dec(k)): dec(x) for k, x in pairs}, "__dataclass__": dataclass}
    return dec(tree)


def _hashable(key: Any) -> Any:
    if isinstance(key, (dict, list)):
        raise BadEntry(f"unhashable dict key {key!r}")
    return key


def _value_type(name: str) -> type:
    module, qualname = VALUE_TYPES[name]
    return getattr(importlib.import_module(module), qualname)


def write_entry(path: Path, value: Any) -> None:
    """Write `value` to `path` atomically (temp file in the same folder, fsync, rename), readable by the folder's
    group and others as the umask allows (a shared cache is read by other people's jobs)."""
    tree, tensors = encode(value)  # before any file exists: an unstorable value leaves nothing behind
    metadata = {"unlearn.format": str(FORMAT_VERSION), "unlearn.value": json.dumps(tree, allow_nan=False)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        os.close(fd)
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk (on NFS: on the server) before the name points at it
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: no one else could read a shared entry
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_entry(path: Path) -> Any:
    """The value in an entry file; BadEntry (or OSError) if it is not a whole entry of this format. Reads the file
    into memory (no mmap: an entry replaced on another NFS client must not fault a mapped page)."""
    data = path.read_bytes()
    if len(data) < 8:
        raise BadEntry(f"{len(data)} bytes")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise BadEntry("the header runs past the end of the file")
    try:
        header = json.loads(data[8:8 + size])
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise BadEntry(f"not a safetensors header ({exc})") from None
    if metadata.get("unlearn.format") != str(FORMAT_VERSION):
        raise BadEntry(f"format {metadata.get('unlearn.format')!r}, expected {FORMAT_VERSION}")
    return decode(json.loads(metadata["unlearn.value"]), load_tensors(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the store ----------------------------------------------------------------------------------------------
class NotCached(LookupError):
    """A key missing from a cache that was told not to compute (`Cache.only_cached`)."""

    def __init__(self, key: str, what: str):
        super().__init__(f"{what} ({key}) is not cached")
        self.key, self.what = key, what


class Cache:
    """Entries `<root>/<key>.safetensors`. `io` counts the time spent reading and writing them (seconds, calls)."""

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled
        self.io = {"load_s": 0.0, "loads": 0, "save_s": 0.0, "saves": 0}
        self._only_cached = False

    def path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def contains(self, key: str) -> bool:
        return self.enabled and self.path(key).exists()

    def check_writable(self) -> None:
        """ConfigError (one line, before anything trains) if the cache folder cannot be created or written."""
        if not self.enabled:
            return
        try:
            if self.root.exists():
                with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check.", suffix=".tmp"):
                    pass
            else:  # not created here: a run refused a moment later must leave nothing behind
                parent = next(p for p in self.root.absolute().parents if p.exists())
                if not parent.is_dir():
                    raise NotADirectoryError(20, "Not a directory", str(parent))
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise PermissionError(13, "Permission denied", str(parent))
        except OSError as exc:
            raise ConfigError(f"the cache folder {self.root} is not writable ({exc.strerror or exc}); point cache_dir= "
                              f"(or $UNLEARN_CACHE) at a folder you can write, or run with use_cache=false") from None

    def load(self, key: str) -> Any | None:
        path = self.path(key)
        if not (self.enabled and path.exists()):
            return None
        start = time.perf_counter()
        try:
            value = read_entry(path)
        except Exception as exc:  # truncated, crafted, or another format: recomputed and replaced (under the lock)
            log.warning("cache entry %s cannot be loaded (%s: %s); recomputing it", path.name, type(exc).__name__, exc)
            return None
        self.io["load_s"] += time.perf_counter() - start
        self.io["loads"] += 1
        return value

    def save(self, key: str, value: Any) -> None:
        """Store `value` (UnstorableValue, before anything is written, if it holds a type the format lacks)."""
        if not self.enabled:
            return
        start = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        write_entry(self.path(key), value)
        self.io["save_s"] += time.perf_counter() - start
        self.io["saves"] += 1

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold `key`'s lock (across processes and, where the file system carries flock, machines). Re-entrant
        within a process, so a stage may hold a key while a nested `get_or_compute` of the same key saves it."""
        if not self.enabled:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = str(self.root / f".{key}.lock")
        with _LOCKS.setdefault(path, FileLock(path)):
            yield

    @contextmanager
    def locked(self, keys: Iterable[str]) -> Iterator[None]:
        """Hold several keys' locks, taken in sorted order, so two jobs that need overlapping sets cannot deadlock."""
        with ExitStack() as stack:
            for key in sorted(set(keys)):
                stack.enter_context(self.lock(key))
            yield

    @contextmanager
    def only_cached(self) -> Iterator[None]:
        """Within: a missing key raises NotCached instead of being computed (to check what a run would train)."""
        before, self._only_cached = self._only_cached, True
        try:
            yield
        finally:
            self._only_cached = before

    def get_or_compute(self, key: str, compute: Callable[[], Any], what: str) -> tuple[Any, bool]:
        """Return (value, was_cached). Only one process computes a missing key; the others wait and load it. A value
        the format cannot store is returned uncached, with a warning (a finished computation is never lost)."""
        value = self.load(key)
        if value is not None:
            log.info("%s: reusing cached %s", what, key)
            return value, True
        if self._only_cached and self.enabled:
            raise NotCached(key, what)
        with self.lock(key):
            value = self.load(key)  # another worker may have finished it while we waited
            if value is not None:
                log.info("%s: reusing cached %s", what, key)
                return value, True
            log.info("%s: not cached, computing %s", what, key)
            value = compute()
            try:
                self.save(key, value)
            except UnstorableValue as exc:
                log.warning("%s: not cached: %s", what, exc)
            return value, False
