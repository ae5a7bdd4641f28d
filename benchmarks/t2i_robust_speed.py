"""Speed of robust concept erasure on the text-to-image world (shapes_t2i):

- one prompt attack (attack=prompt, its defaults) on one method (UCE): the attack's search (its cost_s) and the
  judging of the target prompts before and after it (pre-ASR, ASR); target ≤ 60 s on 2 CPU cores;
- AdvUnlearn (method=advunlearn, its defaults): the method alone (RTE) on the cached original, and with --cold
  the whole `python run.py data=shapes_t2i method=advunlearn` from an empty cache (world, judge, original,
  oracle, method, evaluation); target ≤ 5 min cold.

    python benchmarks/t2i_robust_speed.py                  # the default world, threads=1 device=cpu
    python benchmarks/t2i_robust_speed.py --tiny           # the tests' tiny world (8x8, 2 images per combination)
    python benchmarks/t2i_robust_speed.py --cold           # also the cold AdvUnlearn run (trains everything)
Any other argument is a run.py override. The cache is $UNLEARN_CACHE (or the default) except for --cold.
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

TINY = ["data.image_size=8", "data.source.train_per_combo=2", "data.source.test_per_combo=1",
        "data.source.val_per_combo=0", "data.train.epochs=30", "data.task.samples_per_prompt=1",
        "data.task.sampling_steps=8", "data.task.judge_train.epochs=15", "model.block_out_channels=[16,32]",
        "model.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]", "model.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]",
        "model.text_width=32", "forget.concept=white"]


def attack_and_method(overrides: list[str]) -> None:
    import torch

    from unlearn.attacks.base import AttackContext
    from unlearn.cache import default_cache_dir
    from unlearn.config import build, compose_config
    from unlearn.pipeline import Experiment

    cache = f"cache_dir={default_cache_dir()}"
    experiment = Experiment(compose_config(*overrides, "method=uce", "attack=prompt", cache))
    start = time.perf_counter()
    art = experiment.prepare()
    splits = experiment.splits()
    print(f"  (original and oracle ready in {time.perf_counter() - start:.1f} s: cached or trained now)")
    unlearned, _, seconds = experiment.stage.unlearn(art, splits)
    ctx = AttackContext(experiment.task, splits.forget, splits.retain, experiment.runtime,
                        torch.Generator().manual_seed(0), original=art.original, eval_seed=0)
    attack = experiment.attack
    start = time.perf_counter()
    attacked = attack.attack(unlearned, ctx)
    searched = time.perf_counter() - start
    start = time.perf_counter()
    figures = attack.figures(unlearned, attacked, ctx)
    judged = time.perf_counter() - start
    print(f"  prompt attack on uce (UCE {seconds:.2f} s): search {searched:.1f} s + judging before/after {judged:.1f} s "
          f"= {searched + judged:.1f} s; pre-ASR {figures['pre_ASR']:.0f}%, ASR {figures['ASR']:.0f}%")

    method_cfg = compose_config(*overrides, "method=advunlearn", cache)
    experiment.method = build(method_cfg.method)
    _, status, seconds = experiment.stage.unlearn(art, splits)
    print(f"  advunlearn (method.epochs={method_cfg.method.epochs}, attack_steps={method_cfg.method.attack_steps}) "
          f"on the cached original: RTE {seconds:.1f} s ({status})")


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in ("--tiny", "--cold")]
    overrides = ["data=shapes_t2i", "threads=1", "device=cpu", *(TINY if "--tiny" in sys.argv else []), *args]
    print(f"overrides: {' '.join(overrides)}   (cores: {os.cpu_count()})")
    attack_and_method(overrides)
    if "--cold" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "UNLEARN_CACHE": os.path.join(tmp, "cache")}
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "run.py"), f"results_dir={tmp}/out", *overrides,
                            "method=advunlearn"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            print(f"  advunlearn cold (empty cache): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
