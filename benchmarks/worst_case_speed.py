"""Worst-case forget-set selection (forget=worst_case, the paper's defaults) on the embedded digits: time and what it
selects, for this checkout and optionally another one, with the overlap between their selections and, as the
scale of seed noise, between two selection seeds.

    python benchmarks/worst_case_speed.py                            # this checkout, selection seeds 0 and 1
    python benchmarks/worst_case_speed.py --before /path/to/checkout  # also the other checkout, on the same original

The original is trained once per checkout (cached in a temporary directory); only the selection is timed (wall and
CPU seconds of this process, threads=1).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
from unlearn.config import compose_config
from unlearn.pipeline import Experiment
from unlearn.data.forget import Reference
cfg = compose_config("forget=worst_case", "threads=1", "device=cpu", f"cache_dir={sys.argv[1]}", f"results_dir={sys.argv[1]}/out")
exp = Experiment(cfg)
data, _ = exp.data()
original, key, _, _ = exp.original_model(exp.seed)
out = {}
for seed in map(int, sys.argv[2].split(",")):
    exp.seed_stage(seed, "forget")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    forget = exp.builder.build(data, seed, Reference(exp.task, original, key, exp.runtime))
    after = resource.getrusage(resource.RUSAGE_SELF)
    out[seed] = {"wall": time.perf_counter() - start, "indices": forget.indices.tolist(),
                 "cpu": after.ru_utime - usage.ru_utime + after.ru_stime - usage.ru_stime}
print(json.dumps(out))
"""


def select(code: Path, seeds: list[int], cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", CHILD, cache, ",".join(map(str, seeds))], env=env, cwd=code,
                          check=True, capture_output=True, text=True)
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def overlap(a: list[int], b: list[int]) -> float:
    return len(set(a) & set(b)) / max(len(a), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (e.g. main)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    runs = {}
    for label, code in (("before", args.before), ("after", ROOT)):
        if code is None:
            continue
        with tempfile.TemporaryDirectory() as cache:
            runs[label] = select(code.resolve(), args.seeds, cache)
        for seed, r in runs[label].items():
            print(f"{label:6s} {code.resolve()}  seed {seed}: {r['wall']:6.1f} s wall, {r['cpu']:6.1f} s cpu, "
                  f"{len(r['indices'])} examples", flush=True)
    after = runs["after"]
    s0, s1 = args.seeds[0], args.seeds[-1]
    if len(args.seeds) > 1:
        print(f"seed noise: overlap of seed {s0} and seed {s1} selections (after): "
              f"{overlap(after[s0]['indices'], after[s1]['indices']):.3f}")
    if "before" in runs:
        before = runs["before"]
        for seed in args.seeds:
            print(f"seed {seed}: overlap before/after {overlap(before[seed]['indices'], after[seed]['indices']):.3f}; "
                  f"speed-up {before[seed]['wall'] / after[seed]['wall']:.2f}x wall, "
                  f"{before[seed]['cpu'] / after[seed]['cpu']:.2f}x cpu")
        if len(args.seeds) > 1:
            print(f"seed noise (before): {overlap(before[s0]['indices'], before[s1]['indices']):.3f}")


if __name__ == "__main__":
    main()
