"""Deletion streams: wall time of a 4-step sequence (cold and warm cache), and what one SISA request costs
against retraining.

    python benchmarks/sequence_speed.py                 # method=salun on the embedded default (digits, SmallCNN)
    python benchmarks/sequence_speed.py method=ga       # any run.py overrides for the sequence part

Targets (issue 14, 2 CPU cores): cold <= 3 min (original and the four per-step oracles included), warm <= 30 s;
a SISA request <= 1/S of retraining SISA from scratch. Printed, never asserted.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unlearn.cache import Cache  # noqa: E402
from unlearn.config import compose_config  # noqa: E402
from unlearn.methods.base import UnlearnContext  # noqa: E402
from unlearn.pipeline import Experiment  # noqa: E402


def timed_run(overrides: list[str], env: dict[str, str], results: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), f"results_dir={results}", "save_model=false", *overrides],
                   env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def sequence_cold_warm(overrides: list[str]) -> None:
    overrides = ["scenario=sequence", "scenario.steps=4", "threads=1", *overrides]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "UNLEARN_CACHE": os.path.join(tmp, "cache")}
        cold = timed_run(overrides, env, os.path.join(tmp, "out"))
        warm = timed_run(overrides, env, os.path.join(tmp, "out"))
    print(f"python run.py {' '.join(overrides)}")
    print(f"  cold (empty cache: original + 4 oracles + 4 requests): {cold:6.1f} s   (target <= 180 s)")
    print(f"  warm (cached original and oracles):                    {warm:6.1f} s   (target <= 30 s)")


def sisa_request_cost(shards: int = 4, slices: int = 4, requests: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config("method=sisa", f"method.shards={shards}", f"method.slices={slices}", "threads=1",
                             "device=cpu", f"cache_dir={tmp}")
        exp = Experiment(cfg, Cache(tmp))
        data, _ = exp.data()
        start = time.perf_counter()
        ensemble, *_ = exp.models.original_model(exp.seed)
        full = time.perf_counter() - start
        rng = np.random.default_rng(0)
        print(f"SISA on digits ({len(data.train)} training examples), {shards} shards x {slices} slices:")
        print(f"  training every shard from scratch: {full:6.2f} s")
        for i in range(requests):
            forget = rng.choice(np.setdiff1d(np.arange(len(data.train)), ensemble.deleted), 1, replace=False)
            ctx = UnlearnContext(task=exp.task, original=ensemble, forget=data.train.subset(forget),
                                 retain=data.train.subset(np.setdiff1d(np.arange(len(data.train)), forget)),
                                 runtime=exp.runtime, generator=exp.runtime.generator(0, "bench"), oracle=lambda: None,
                                 oracle_seconds=0.0, forget_indices=forget)
            start = time.perf_counter()
            ensemble = exp.method.unlearn(ctx)
            seconds = exp.method.reported_seconds(time.perf_counter() - start, ctx)
            f = exp.method.run_metrics()
            print(f"  request {i + 1} (1 point): {seconds:6.2f} s = {seconds / full:.3f} of the full retrain "
                  f"(target <= 1/S = {1 / shards:.3f}); {f['shards_retrained']:.0f} shard, "
                  f"{f['stages_retrained']:.0f} stages retrained; speed-up in sample-passes {f['speedup']:.1f}x")


def main() -> None:
    print(f"cores: {os.cpu_count()}")
    sisa_request_cost()
    sequence_cold_warm(sys.argv[1:])


if __name__ == "__main__":
    main()
