"""Speed and judge figures of the text-to-image task (shapes_t2i):

- wall time of `python run.py data=shapes_t2i method=esd` with an empty cache (cold: world, judge, original,
  oracle, method, evaluation) and again with it filled (warm);
- the time of UCE's edit (method.unlearn: text states + the closed form on every attn2 k/v projection);
- the judge's per-axis accuracy on real test images and on the original model's generations.

    python benchmarks/t2i_speed.py                         # threads=1 device=cpu
    python benchmarks/t2i_speed.py threads=2               # any run.py overrides
    UNLEARN_CACHE=/path python benchmarks/t2i_speed.py --no-cold   # only the UCE and judge figures, from that cache
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed_run(overrides: list[str], env: dict[str, str], results: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), f"results_dir={results}", *overrides], env=env, check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_seconds(results: str) -> str:
    """The cold run's stages, from its row: world + judge, original, oracle, the method (RTE)."""
    import json

    row = json.loads(Path(results, "default", "table.jsonl").read_text().splitlines()[-1])
    t = row["timings"]
    beside = " (trained side by side in two processes)" if t.get("beside_oracle") else ""
    return (f"world + judge {t['data_s']:.1f} s, original {t['original_s']:.1f} s, oracle {t['oracle_s']:.1f} s{beside}, "
            f"method {row['metrics']['RTE_s']:.1f} s; the rest is evaluation and start-up")


def judge_and_uce(overrides: list[str], cache_dir: str) -> None:
    import torch

    from unlearn.config import compose_config
    from unlearn.methods.base import UnlearnContext
    from unlearn.methods.uce import UCE
    from unlearn.pipeline import Experiment

    experiment = Experiment(compose_config(*overrides, "method=uce", f"cache_dir={cache_dir}"))
    art = experiment.prepare()
    splits = experiment.splits()
    task = experiment.task
    ctx = UnlearnContext(task=task, original=art.original, forget=splits.forget, retain=splits.retain,
                         runtime=experiment.runtime, generator=torch.Generator().manual_seed(0),
                         oracle=lambda: art.oracle, oracle_seconds=art.oracle_seconds)
    method = UCE()
    method.unlearn(ctx)  # warm-up: first calls pay one-off costs (tokenizer, kernels)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        method.unlearn(ctx)
        times.append(time.perf_counter() - start)
    print(f"  UCE edit (method.unlearn, {len(art.original.cross_attention_projections())} k/v projections): "
          f"{min(times):.3f} s (best of 3)")
    print("  judge accuracy on real test images: "
          + ", ".join(f"{axis} {acc:.1f}%" for axis, acc in task.judge_test_acc.items()))
    metrics = task.evaluate(art.original, splits, experiment.runtime, int(experiment.cfg.eval.seed))
    print("  judge accuracy on the original's generations (the prompted value, per axis): "
          + ", ".join(f"{axis} {metrics[f'gen_acc_{axis}']:.1f}%" for axis in task.axes))


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-cold"]
    overrides = ["data=shapes_t2i", "method=esd", "threads=1", "device=cpu", *args]
    print(f"python run.py {' '.join(overrides)}   (cores: {os.cpu_count()})")
    if "--no-cold" in sys.argv:
        from unlearn.cache import default_cache_dir

        judge_and_uce(overrides, str(default_cache_dir()))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "UNLEARN_CACHE": os.path.join(tmp, "cache")}
        cold = timed_run(overrides, env, os.path.join(tmp, "out"))
        stages = stage_seconds(os.path.join(tmp, "out"))
        warm = timed_run(overrides, env, os.path.join(tmp, "out"))
        print(f"  cold (empty cache): {cold:6.1f} s   ({stages})")
        print(f"  warm (cached judge, original, oracle): {warm:6.1f} s")
        judge_and_uce(overrides, os.path.join(tmp, "cache"))


if __name__ == "__main__":
    main()
