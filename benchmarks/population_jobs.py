"""A population of N built by k local worker processes (one Hydra job per member, `stage=members`, through the
joblib launcher; then the population run from the cache, `stage=metrics`) against the same population built in one
process (`stage=all`), each from a cold cache; and what a member job costs beside its computation (start-up, cache
I/O), so a user can size N and k on a cluster. Printed, never asserted.

    python benchmarks/population_jobs.py                      # N=4, k=2, tiny digits (300 examples, 15 epochs)
    python benchmarks/population_jobs.py --n 8 --k 4 method=salun data.train.epochs=30   # any run.py overrides

Figures: wall seconds of each phase; per member job (mean): `setup` (the job's checks and Experiment before any
stage), `build` (its original, oracle, method and statistics, data loading included), `cache I/O` (of build: reading
and writing entries), and `overhead` = k * members wall / N - build: worker time per job not spent building
(interpreter and imports, Hydra, set-up, waiting on a shared entry's lock). Interpreter start-up with the package's
imports is timed on its own.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source.limit=300", "data.train.epochs=15", "data.train.batch_size=32", "data.train.lr=0.1",
        "device=cpu", "threads=1", "method=ga", "method.epochs=2", "save_model=false"]


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="population size (eval.oracles)")
    parser.add_argument("--k", type=int, default=2, help="local worker processes (hydra.launcher.n_jobs)")
    args, overrides = parser.parse_known_args()
    common = [*TINY, f"eval.oracles={args.n}", *overrides]
    # The thread budget of a worker as loky sets it (cores // k), given to every process here, so the one-process
    # run, the workers and the population run compute the same keys and models.
    threads = str(max(1, (os.cpu_count() or 1) // args.k))
    with tempfile.TemporaryDirectory(prefix="population-jobs-") as tmp:
        env = {**{k: v for k, v in os.environ.items() if k != "UNLEARN_CACHE"}, "OMP_NUM_THREADS": threads}
        out = Path(tmp) / "out"
        startup = timed(["-c", "import unlearn.cli"], env)
        one = timed(["run.py", *common, f"cache_dir={tmp}/one", f"results_dir={out}/one"], env)
        members = timed(["run.py", "-m", *common, "stage=members", f"member=range(0,{args.n})",
                         "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.k}", f"cache_dir={tmp}/jobs",
                         f"results_dir={out}/jobs"], env)
        metrics = timed(["run.py", *common, "stage=metrics", f"cache_dir={tmp}/jobs", f"results_dir={out}/jobs"], env)
        jobs = [json.loads(p.read_text()) for p in (out / "jobs").glob("default/sweeps/*/*/member.json")]
    assert len(jobs) == args.n, f"{len(jobs)} member.json files for {args.n} members"
    build = statistics.mean(j["seconds"] for j in jobs)
    setup = statistics.mean(j["setup_s"] for j in jobs)
    io = {k: statistics.mean(j["cache_io"][k] for j in jobs) for k in jobs[0]["cache_io"]}
    print(f"population of N={args.n} ({' '.join(common)}); {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"one process (stage=all):                       {one:7.1f} s")
    print(f"k={args.k} workers: {args.n} member jobs (joblib)          {members:7.1f} s")
    print(f"             population run (stage=metrics)    {metrics:7.1f} s")
    print(f"             total                             {members + metrics:7.1f} s   "
          f"(speed-up {one / (members + metrics):.2f}x)")
    print(f"per member job (mean of {args.n}): setup {setup:.2f} s, build {build:.2f} s, of which cache I/O "
          f"{io['load_s'] + io['save_s']:.3f} s ({io['loads']:.1f} loads {io['load_s']:.3f} s, {io['saves']:.1f} "
          f"saves {io['save_s']:.3f} s); overhead {args.k * members / args.n - build:.2f} s")
    print(f"interpreter start-up with `import unlearn.cli`: {startup:.2f} s")


if __name__ == "__main__":
    main()
