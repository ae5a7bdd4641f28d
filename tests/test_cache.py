"""The content-addressed cache: keys depend on exactly their fields; writes are atomic."""
import os

import numpy as np
import pytest
import torch

from unlearn.cache import Cache, content_key


def test_key_is_stable_and_sensitive():
    a = content_key("oracle", code="c", model={"w": 16, "n": 10}, forget=np.arange(5), seed=0)
    assert a == content_key("oracle", code="c", model={"n": 10, "w": 16}, forget=np.arange(5), seed=0)  # order-free
    assert a != content_key("oracle", code="c", model={"w": 16, "n": 10}, forget=np.arange(6), seed=0)
    assert a != content_key("oracle", code="c", model={"w": 16, "n": 10}, forget=np.arange(5), seed=1)
    assert a != content_key("original", code="c", model={"w": 16, "n": 10}, forget=np.arange(5), seed=0)
    assert a != content_key("oracle", code="d", model={"w": 16, "n": 10}, forget=np.arange(5), seed=0)  # code changed
    assert content_key("d", code="c", t=torch.ones(3)) != content_key("d", code="c", t=torch.zeros(3))


def test_get_or_compute_computes_once(tiny_cache):
    calls = []
    compute = lambda: calls.append(1) or {"v": torch.arange(3)}  # noqa: E731
    first, cached_first = tiny_cache.get_or_compute("k-1", compute, "thing")
    second, cached_second = tiny_cache.get_or_compute("k-1", compute, "thing")
    assert (cached_first, cached_second) == (False, True)
    assert len(calls) == 1 and torch.equal(first["v"], second["v"])


def test_an_interrupted_write_leaves_no_entry(tiny_cache, monkeypatch):
    """Interrupted after the bytes are written, before the rename (a killed process: tests/test_cache_safe.py)."""
    def interrupted(fd):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny_cache.save("k-2", {"ok": torch.ones(1000)})
    assert tiny_cache.load("k-2") is None
    assert list(tiny_cache.root.iterdir()) == []


def test_a_failed_compute_leaves_no_entry(tiny_cache):
    def compute():
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        tiny_cache.get_or_compute("k-3", compute, "thing")
    assert tiny_cache.load("k-3") is None


def test_disabled_cache_never_writes(tmp_path):
    cache = Cache(tmp_path / "c", enabled=False)
    value, cached = cache.get_or_compute("k", lambda: 1, "thing")
    assert (value, cached) == (1, False) and not (tmp_path / "c").exists()
