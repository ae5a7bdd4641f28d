"""Wall time of every LLM method on data=facts: cold (empty cache: trains the original and the oracle) and warm
(both cached), each as a fresh `python run.py` process; then the evaluation time of one model (every LLM metric).

    python benchmarks/llm_speed.py                          # every method, cold and warm
    python benchmarks/llm_speed.py --methods npo flat-kl    # a subset (names as below)
    python benchmarks/llm_speed.py --warm-only              # one shared cache: cold once, then warm per method
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["data=facts", "threads=1", "save_model=false"]
METHODS = {
    "ga": ["method=ga"], "graddiff": ["method=graddiff"], "graddiff+wagle": ["method=graddiff", "method.mask=wagle"],
    "npo": ["method=npo"], "npo+wagle": ["method=npo", "method.mask=wagle"], "simnpo": ["method=simnpo"],
    "idkdpo": ["method=idkdpo"], "idkpo": ["method=idkpo"], "rmu": ["method=rmu"],
    "flat-kl": ["method=flat", "method.divergence=kl"], "flat-js": ["method=flat", "method.divergence=js"],
    "flat-pearson": ["method=flat", "method.divergence=pearson"], "flat-tv": ["method=flat", "method.divergence=tv"],
}


def timed_run(overrides: list[str], cache: str, results: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), f"results_dir={results}", f"cache_dir={cache}", *COMMON,
                    *overrides], check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def evaluation_seconds(cache: str) -> float:
    """task.evaluate + compare_to_oracle of the (cached) original, in this process."""
    from unlearn.config import compose_config
    from unlearn.pipeline import Experiment

    experiment = Experiment(compose_config(*COMMON, f"cache_dir={cache}"))
    art = experiment.prepare()
    splits = experiment.splits()
    experiment.evaluator.evaluate(art.original, art.oracle, splits)  # warm-up: imports, the ROUGE scorer
    start = time.perf_counter()
    experiment.evaluator.evaluate(art.original, art.oracle, splits)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--warm-only", action="store_true", help="cold once (the first method), warm for every method")
    args = parser.parse_args()
    print(f"data=facts, {os.cpu_count()} cores, threads=1; cold = empty cache, warm = original and oracle cached")
    with tempfile.TemporaryDirectory() as tmp:
        shared = os.path.join(tmp, "shared")
        for i, name in enumerate(args.methods):
            cache = shared if args.warm_only else os.path.join(tmp, f"cache-{name}")
            cold = timed_run(METHODS[name], cache, os.path.join(tmp, "out")) if (i == 0 or not args.warm_only) else None
            warm = timed_run(METHODS[name], cache, os.path.join(tmp, "out"))
            cold_text = f"{cold:6.1f} s" if cold is not None else "     -  "
            print(f"  {name:15s} cold {cold_text}   warm {warm:6.1f} s", flush=True)
        print(f"  evaluation of one model (all LLM metrics): {evaluation_seconds(shared if args.warm_only else cache):.1f} s")


if __name__ == "__main__":
    main()
