"""Shared fixtures: compose the real Hydra config and run the real pipeline on tiny data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from unlearn.cache import Cache
from unlearn.config import compose_config
from unlearn.pipeline import Experiment

ROOT = Path(__file__).resolve().parents[1]

# The embedded default shrunk for tests: 300 training digits, a short recipe that still memorises them.
# One thread: tiny models are overhead-bound, and a second thread only adds contention on a shared CPU.
TINY = ["data.source.limit=300", "data.train.epochs=15", "data.train.batch_size=32", "data.train.lr=0.1", "device=cpu",
        "threads=1"]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the whole session: tests with the same tiny settings train the original once. Under
    pytest-xdist the workers share it too (the cache's per-key lock makes one of them compute an artifact
    while the others wait for it)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "shared-cache"
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def tests_own_cache(shared_cache):
    """Whatever a test runs without a cache_dir (a subprocess, a default config) caches in the session's cache, never
    in the user's $UNLEARN_CACHE; UNLEARN_TEST_CACHE=<folder> keeps one between sessions (e.g. the converted real
    LM)."""
    before = os.environ.get("UNLEARN_CACHE")
    os.environ["UNLEARN_CACHE"] = os.environ.get("UNLEARN_TEST_CACHE") or str(shared_cache)
    yield
    if before is None:
        os.environ.pop("UNLEARN_CACHE", None)
    else:
        os.environ["UNLEARN_CACHE"] = before


@pytest.fixture
def run_experiment(tmp_path, shared_cache):
    """run_experiment(*overrides, cache_dir=None) -> result row, with the table logger writing under tmp_path."""

    def _run(*overrides: str, cache_dir: Path | None = None, tiny: bool = True) -> dict:
        cfg = compose_config(*(TINY if tiny else []), f"results_dir={tmp_path / 'outputs'}",
                             f"table_path={tmp_path / 'outputs' / 'table.jsonl'}",
                             f"cache_dir={cache_dir or shared_cache}", *overrides)
        run_dir = tmp_path / "run" / cfg.method._target_.rsplit(".", 1)[-1] / str(len(list(tmp_path.glob("run/*/*"))))
        return Experiment(cfg).run(run_dir=run_dir, command="pytest")

    return _run


@pytest.fixture
def tiny_cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache")


def apply_request(exp, original, forget):
    """Exact methods' unlearn on `forget` (training-set indices) outside the pipeline: (model, run_metrics)."""
    import numpy as np
    import torch

    from unlearn.methods.base import UnlearnContext

    data, _ = exp.data()
    ctx = UnlearnContext(task=exp.task, original=original, forget=data.train.subset(forget),
                         retain=data.train.subset(np.setdiff1d(np.arange(len(data.train)), forget)),
                         runtime=exp.runtime, generator=torch.Generator().manual_seed(0), oracle=lambda: None,
                         oracle_seconds=0.0, forget_indices=forget)
    return exp.method.unlearn(ctx), exp.method.run_metrics()
