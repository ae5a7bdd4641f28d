"""The results row: one per run, in a stable schema (DESIGN.md, 'Results')."""
from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path
from typing import Any

from unlearn.eval.gap import average_gap, gaps
from unlearn.report.tables import markdown

SCHEMA_VERSION = 1
# Shown beside the Avg. Gap metrics when a task reports them (LLM rows: TOFU's forget quality and model
# utility, MUSE's privleak).
HEADLINE_EXTRA = ("forget_quality", "model_utility", "privleak")


def code_version() -> str:
    """The git commit of the harness (with '+dirty' for uncommitted changes), else the package version."""
    from unlearn import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def environment(device: str, batch_size: int | None) -> dict[str, Any]:
    """What results move with (the reproducibility complaints filed most against LLM harnesses): library
    versions, the device, the number of processes and the effective batch size (per-process batch × processes)."""
    import importlib.metadata as md
    import os
    import platform

    import torch

    def version(package: str) -> str | None:
        try:
            return md.version(package)
        except md.PackageNotFoundError:
            return None

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    return {"harness": code_version(), "python": platform.python_version(),
            **{lib: version(lib) for lib in ("torch", "transformers", "diffusers", "peft", "accelerate")},
            "device": str(dev), "device_name": name, "processes": processes,
            "effective_batch_size": None if batch_size is None else int(batch_size) * processes}


def make_row(*, task: str, data: str, model: str, forget: dict, method: str, method_params: dict, seed: int,
             status: str, metrics: dict, original: dict, oracle: dict, gap_metrics: tuple[str, ...],
             command: str, config: dict, run_dir: str | None, timings: dict,
             env: dict[str, Any] | None = None) -> dict[str, Any]:
    gap = gaps(metrics, oracle, gap_metrics)
    oracle_seconds = oracle.get("RTE_s", float("nan"))
    return {
        "schema": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "task": task, "data": data, "model": model, "forget": forget,
        "method": method, "method_params": method_params, "seed": seed, "status": status,
        "metrics": metrics, "gap": gap, "avg_gap": average_gap(gap),
        "rte_relative": metrics.get("RTE_s", float("nan")) / oracle_seconds if oracle_seconds else float("nan"),
        "reference": {"original": original, "oracle": oracle},
        "timings": timings, "environment": env or {}, "command": command, "run_dir": run_dir, "config": config,
    }


def summary_table(row: dict[str, Any]) -> str:
    """The end-of-run tables: the original and the oracle beside the method; headline metrics (those in
    Avg. Gap, HEADLINE_EXTRA, and RTE) first, every other metric in a second table."""
    names = list(row["metrics"])
    for ref in ("original", "oracle"):
        names += [n for n in row["reference"][ref] if n not in names]
    headline = [n for n in names if n in row["gap"]] + [n for n in HEADLINE_EXTRA if n in names] + ["RTE_s"]
    detail = [n for n in names if n not in headline]
    models = [("Original", row["reference"]["original"], None), ("Retrain (oracle)", row["reference"]["oracle"], 0.0),
              (f"{row['method']} [{row['status']}]", row["metrics"], row["avg_gap"])]
    title = (f"{row['task']} | data={row['data']} model={row['model']} forget={row['forget'].get('builder')} "
             f"(|F|={row['forget'].get('size')}) seed={row['seed']}")
    text = title + "\n" + markdown(["model", *headline, "Avg.Gap"], [[label, *[m.get(n) for n in headline], gap]
                                                                     for label, m, gap in models])
    if detail:
        text += "\n\n" + markdown(["model", *detail], [[label, *[m.get(n) for n in detail]] for label, m, _ in models])
    return text
