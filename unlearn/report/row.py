"""The results row: one per run, in a stable schema (DESIGN.md, 'Results')."""
from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.eval.gap import average_gap, gaps
from unlearn.runtime import cpu_kind
from unlearn.report.tables import WIDTH, attack_of, base_name, fmt, split_markdown, term, units_note, wrap

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
    versions, the device, torch's CPU threads (they change a CPU run's rounding, so its numbers), the number of
    processes and the effective batch size (per-process batch × processes), and the CPU kind (`cpu_kind`: its kernels
and model also move a CPU run's numbers)."""
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
            "device": str(dev), "device_name": name, "threads": torch.get_num_threads(), "cpu_kind": cpu_kind(),
            "processes": processes,
            "effective_batch_size": None if batch_size is None else int(batch_size) * processes}


def make_row(*, task: str, data: str, model: str, forget: dict, method: str, method_params: dict, seed: int,
             status: str, metrics: dict, original: dict, oracle: dict, gap_metrics: tuple[str, ...],
             command: str, config: dict, run_dir: str | None, timings: dict,
             env: dict[str, Any] | None = None) -> dict[str, Any]:
    gap = gaps(metrics, oracle, gap_metrics)
    # RTE / Retrain compares like with like: CPU seconds on a CPU (load moves wall time), wall seconds elsewhere.
    basis = "cpu" if str((env or {}).get("device", "cpu")).startswith("cpu") else "wall"
    name = "RTE_cpu_s" if basis == "cpu" else "RTE_s"
    oracle_seconds = oracle.get(name, float("nan"))
    return {
        "schema": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "task": task, "data": data, "model": model, "forget": forget,
        "method": method, "method_params": method_params, "seed": seed, "status": status,
        "metrics": metrics, "gap": gap, "avg_gap": average_gap(gap),
        "rte_relative": metrics.get(name, float("nan")) / oracle_seconds if oracle_seconds else float("nan"),
        "rte_basis": basis,
        "reference": {"original": original, "oracle": oracle},
        "timings": timings, "environment": env or {}, "command": command, "run_dir": run_dir, "config": config,
    }


def _task_gap_metrics(row: dict[str, Any]) -> tuple[str, ...]:
    """The gap metrics of the row's task class (rows without an oracle carry no gaps to name them by)."""
    target = (((row.get("config") or {}).get("data") or {}).get("task") or {}).get("_target_")
    if not target:
        return ()
    from hydra.utils import get_class

    try:
        return tuple(get_class(target).gap_metrics)
    except (ImportError, AttributeError):  # a row from another version of the harness
        return ()


def summary_sections(row: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The row's metric names (of the method, the original and the oracle) as (heading, columns) tables, most
    read first: the headline (gap metrics, HEADLINE_EXTRA, "Avg.Gap", RTE), one table per attack
    (`<attack>.<metric>`: its gap metrics, then its own figures, then the rest), the population metrics, then
    every other metric. Each name is in exactly one table."""
    original, oracle = row["reference"]["original"], row["reference"].get("oracle") or {}
    names = list(dict.fromkeys([*row["metrics"], *original, *oracle]))
    gapped = [n for n in names if n in row["gap"]] or [n for n in _task_gap_metrics(row) if n in names]
    headline = gapped + [n for n in HEADLINE_EXTRA if n in names and n not in gapped]
    cost = [n for n in names if n.startswith("RTE")]
    rest = [n for n in names if n not in headline and n not in cost]
    sections = [("", [*headline, "Avg.Gap", *cost])]
    for attack in dict.fromkeys(a for a in map(attack_of, rest) if a is not None):
        members = [n for n in rest if attack_of(n) == attack]
        first = [f"{attack}.{n}" for n in headline if f"{attack}.{n}" in members]
        figures = [n for n in members if base_name(n) not in names and n not in first]  # pre_ASR, ASR, cost_s
        sections.append((f"attack={attack}: each model after the attack (the same attack on each), as {attack}.<metric>",
                         [*first, *figures, *(n for n in members if n not in first and n not in figures)]))
    rest = [n for n in rest if attack_of(n) is None]
    population = [n for n in rest if getattr(term(n, row.get("task")), "family", "") == "population"]
    if population:
        oracles = ((row.get("config") or {}).get("eval") or {}).get("oracles")
        sections.append((f"population: over {oracles or 'N'} originals, oracles and unlearned models (eval.oracles)",
                         population))
    other = [n for n in rest if n not in population]
    if other:
        sections.append(("other metrics", other))
    return sections


def summary_table(row: dict[str, Any], width: int = WIDTH) -> str:
    """The end-of-run tables (`summary_sections`), with the original and the oracle beside the method, each line
    at most `width` characters where a cell allows: a wider table is split into several, each led by the model
    column; a units note heads each table."""
    original, oracle = row["reference"]["original"], row["reference"].get("oracle") or {}
    models = [("Original", original, None)] + ([("Retrain (oracle)", oracle, 0.0)] if oracle else []) + \
        [(f"{row['method']} [{row['status']}]", row["metrics"], row["avg_gap"])]
    title = (f"{row['task']} | data={row['data']} model={row['model']} forget={row['forget'].get('builder')} "
             f"(|F|={row['forget'].get('size')}) seed={row['seed']}")
    blocks = []
    for heading, columns in summary_sections(row):
        frame = pd.DataFrame([[label, *[fmt((values | {"Avg.Gap": gap}).get(n)) for n in columns]]
                              for label, values, gap in models], columns=["model", *columns])
        note = units_note(columns, row.get("task"))
        head = "\n".join(wrap(text, width) for text in (heading, note) if text)
        blocks.append((head + "\n" if head else "") + split_markdown(frame, ["model"], width))
    return wrap(title, width) + "\n" + "\n\n".join(blocks)
