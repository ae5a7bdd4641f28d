"""Worst-case forget-set selection [Challenging Forgets], before and after the speed-up: time per seed and overlap.

    python benchmarks/worst_case_speed.py                      # digits, cnn_small, paper defaults, 5 seeds, threads=1
    python benchmarks/worst_case_speed.py --seeds 3 forget.tail_steps=10   # any run.py overrides (the "after" builder)

"before" is unlearn/data/worst_case.py as it was at commit e8da820 (read with `git show` into a temporary module,
so no old code stays in the package); "after" is the builder conf/forget/worst_case.yaml makes with the overrides;
"paper mode" is the same code with resolve_every=1, tail_steps=1, which must select exactly what "before" does.
All selections use one original (the run's seed) and differ only in the selection seed, so the overlap of "before"
between seeds is the procedure's own seed noise: the yardstick for the overlap of "after" with "before".
Time is wall clock and the process's CPU time (user + system; a shared machine inflates it less).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from unlearn.config import compose_config
from unlearn.data.forget import Reference
from unlearn.pipeline import Experiment
from unlearn.runtime import derive_seed

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "e8da820"
FIELDS = ("ratio", "count", "upper_epochs", "lower_epochs", "lr_w", "lr_theta", "gamma", "l1", "binarize_every",
          "batch_size")


def old_module(tmp: str):
    source = subprocess.run(["git", "show", f"{BEFORE}:unlearn/data/worst_case.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tmp) / "worst_case_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("worst_case_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(builder, data, seed: int, reference) -> tuple[set, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    forget = builder.build(data, seed, reference)
    return set(forget.indices.tolist()), time.perf_counter() - wall, time.process_time() - cpu


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def share(a: set, b: set) -> float:
    return len(a & b) / len(a)


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="selection seeds 0..N-1")
    args, overrides = parser.parse_known_args()
    cfg = compose_config("forget=worst_case", "method=ft", "threads=1", *overrides)
    experiment = Experiment(cfg)
    data, _ = experiment.data()
    payload, key, _ = experiment.models.original(experiment.seed, None)  # trained (or loaded) before any clock starts
    reference = Reference(experiment.task, experiment.models.model_from_state(payload), key, experiment.runtime)
    after = experiment.builder
    with tempfile.TemporaryDirectory() as tmp:
        old = old_module(tmp)
        fields = {name: getattr(after, name) for name in FIELDS}
        builders = {"before": old.WorstCaseForget(**fields),
                    "paper mode": type(after)(**fields, resolve_every=1, tail_steps=1),
                    "after": after}
        picked = {name: [] for name in builders}
        rows = []
        for s in range(args.seeds):
            seed = derive_seed(s, "forget")
            row = [str(s)]
            for name, builder in builders.items():
                chosen, wall, cpu = timed(builder, data, seed, reference)
                picked[name].append(chosen)
                row += [f"{wall:.2f}", f"{cpu:.2f}"]
            print(" | ".join(row), flush=True)
            rows.append(row)
    seconds = {name: (np.mean([float(r[1 + 2 * i]) for r in rows]), np.mean([float(r[2 + 2 * i]) for r in rows]))
               for i, name in enumerate(builders)}
    print(f"\ncommand: python benchmarks/worst_case_speed.py {' '.join(sys.argv[1:])}")
    print(f"after: resolve_every={after.resolve_every}, tail_steps={after.tail_steps}; "
          + ", ".join(f"{k}={v}" for k, v in fields.items()))
    print(f"{len(data.train)} training examples, m = {len(picked['before'][0])}\n")
    print("| seed | " + " | ".join(f"{n} wall s | {n} cpu s" for n in builders) + " |")
    print("|---" * (1 + 2 * len(builders)) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("| mean | " + " | ".join(f"{w:.2f} | {c:.2f}" for w, c in seconds.values()) + " |\n")
    base = seconds["before"]
    for name in ("paper mode", "after"):
        print(f"speed-up of {name}: {base[0] / seconds[name][0]:.2f}x wall, {base[1] / seconds[name][1]:.2f}x cpu")
    n = args.seeds
    pairs = list(combinations(range(n), 2))
    old, new, paper = picked["before"], picked["after"], picked["paper mode"]
    print("\n| overlap (Jaccard; share of the same indices) | Jaccard | share |")
    print("|---|---|---|")
    lines = [("paper mode vs before, same seed", [(paper[i], old[i]) for i in range(n)]),
             ("after vs before, same seed", [(new[i], old[i]) for i in range(n)]),
             ("after vs before, other seeds", [(new[i], old[j]) for i in range(n) for j in range(n) if i != j]),
             ("seed noise: before vs before, two seeds", [(old[i], old[j]) for i, j in pairs]),
             ("after vs after, two seeds", [(new[i], new[j]) for i, j in pairs])]
    for label, sets in lines:
        print(f"| {label} | {summary([jaccard(a, b) for a, b in sets])} | {summary([share(a, b) for a, b in sets])} |")


if __name__ == "__main__":
    main()
