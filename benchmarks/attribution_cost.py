"""Cost of TRAK attribution (what dmm and dm_direct build on): time and memory to score the training set, and
to predict the removal effect of a forget set on the points DMM matches.

    python benchmarks/attribution_cost.py                          # the embedded default (digits, SmallCNN)
    python benchmarks/attribution_cost.py attribution.proj_dim=512 attribution.models=8
    python benchmarks/attribution_cost.py data=cifar10 device=cuda # any run.py overrides

The ensemble's originals are trained (or loaded from the cache) before the clock starts: they are the
population's originals, shared with `eval.oracles`. Peak memory is the process's resident set on CPU (an upper
bound that includes the interpreter and data) and torch's peak allocation on CUDA.
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np
import torch

from unlearn.config import compose_config
from unlearn.pipeline import Experiment

MiB = 2**20


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    overrides = sys.argv[1:]
    experiment = Experiment(compose_config("method=dmm", *overrides))
    data, _ = experiment.data()
    device = experiment.runtime.device
    attributor = experiment.attributor
    originals = [experiment.models.model_from_state(experiment.models.original(seed, None)[0])
                 for seed in experiment.member_seeds(attributor.models)]
    experiment.prepare()  # the run's forget set (and its oracle), from the cache after a first run
    forget = experiment.request.forget.indices
    n_params = sum(p.numel() for p in originals[0].parameters() if p.requires_grad)
    n_train = len(data.train)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_bytes(device)
    start = time.perf_counter()
    payload = attributor.fit(originals, data.train)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    fit_seconds = time.perf_counter() - start
    fit_peak = peak_bytes(device)
    attribution = attributor.attribution(originals, payload, experiment.runtime)

    with torch.no_grad():
        n_classes = originals[0].eval()(data.train["x"][:1]).shape[1]
    matched = np.concatenate([forget, np.setdiff1d(np.arange(n_train), forget)[: 3 * len(forget)]])
    x = data.train["x"][torch.as_tensor(matched, device=data.train["x"].device)]
    start = time.perf_counter()
    directions = attribution.removal_directions(forget)
    attribution.predicted_change(x, directions)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait before reading the clock
    predict_seconds = time.perf_counter() - start

    p, k, batch = attributor.proj_dim, attributor.models, attributor.batch_size
    print(f"attribution: {' '.join(overrides) or '(embedded default)'}  device={device}  cores={torch.get_num_threads()}")
    print(f"  training set {n_train} examples, {n_params:,} trainable parameters, {k} models, projection dim {p}")
    print(f"  score the training set (per-example margin gradients, sketch, kernel solve): {fit_seconds:7.1f} s"
          f"  ({fit_seconds / k:.1f} s per model, {1e3 * fit_seconds / (k * n_train):.2f} ms per example and model)")
    print(f"  predicted removal effect on |F|={len(forget)} + {len(matched) - len(forget)} retain points:"
          f" {predict_seconds:6.2f} s  (one JVP per model)")
    print("  memory, by construction:")
    print(f"    Psi, kept per model (p x n_train, fp32):        {k * p * n_train * 4 / MiB:9.1f} MiB for {k} models")
    print(f"    one batch of per-example gradients ({batch} x d):  {batch * n_params * 4 / MiB:9.1f} MiB")
    print(f"    sketch hashes (bucket + sign per parameter):    {k * n_params * 12 / MiB:9.1f} MiB for {k} models")
    print(f"    kernel (p x p, fp64) while solving:             {p * p * 8 / MiB:9.1f} MiB")
    print(f"    no train x eval score matrix is formed (it would be {n_train * len(matched) * n_classes * 4 / MiB:.1f} MiB"
          f" for these points and {n_classes} logits)")
    label = "peak CUDA allocation" if device.type == "cuda" else "peak resident set of the process"
    print(f"  measured {label}: {fit_peak / MiB:.0f} MiB (before scoring: {before / MiB:.0f} MiB)")


if __name__ == "__main__":
    main()
