"""Cost of a population: cold `python run.py <overrides> eval.oracles=N` for several N, against N=1.

    python benchmarks/population_scale.py                          # method=ga, N = 1 16 32 64, threads=1
    python benchmarks/population_scale.py --n 1 16 --code /path/to/other/checkout   # the same runs of another checkout
    python benchmarks/population_scale.py --n 1 16 method=ft       # any run.py overrides

Each run starts from an empty cache. Wall time and the CPU time of the run (user + system, which a shared machine
inflates less than the wall clock) are printed per N with the ratio to N=1, then the population metrics of the
row (KLoM, LiRA, ε), so two checkouts can be compared for both cost and results. The runs of one call go back to
back, so the ratios compare runs made under the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POPULATION = ("klom_forget", "klom_retain", "klom_test", "lira_auc", "eps_forgetting", "eps_score", "UA", "RA", "TA")


def cold_run(code: Path, overrides: list[str], tmp: str) -> tuple[float, float, dict]:
    env = {**os.environ, "UNLEARN_CACHE": os.path.join(tmp, "cache"), "PYTHONPATH": str(code)}
    table = os.path.join(tmp, "table.jsonl")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(code / "run.py"), f"results_dir={tmp}/out", f"table_path={table}", *overrides],
                   env=env, check=True, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = json.loads(Path(table).read_text().splitlines()[-1])
    return wall, cpu, row["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 16, 32, 64], help="population sizes (first: the base)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose run.py to time (default: this one)")
    parser.add_argument("overrides", nargs="*", default=[], help="run.py overrides (default: method=ga threads=1)")
    args = parser.parse_args()
    overrides = args.overrides or ["method=ga", "threads=1"]
    results = {}
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            results[n] = cold_run(args.code.resolve(), [*overrides, f"eval.oracles={n}"], tmp)
        wall, cpu, _ = results[n]
        base_wall, base_cpu, _ = results[args.n[0]]
        print(f"eval.oracles={n:<3d} wall {wall:7.1f} s ({wall / base_wall:5.2f}x)   cpu {cpu:7.1f} s "
              f"({cpu / base_cpu:5.2f}x)", flush=True)
    print(f"\ncode: {args.code.resolve()}   overrides: {' '.join(overrides)}   cores: {os.cpu_count()}")
    print("population metrics:\n" + f"{'N':>4s}" + "".join(f"{name:>15s}" for name in POPULATION))
    for n, (_, _, metrics) in results.items():
        print(f"{n:4d}" + "".join(f"{metrics.get(name, float('nan')):15.4f}" for name in POPULATION))


if __name__ == "__main__":
    main()
