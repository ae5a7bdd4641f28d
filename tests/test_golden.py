"""The numbers a refactor must not move: a handful of real runs on tiny settings (classification, facts, digits_gen,
shapes_t2i, a stream, a population, a pruned run, an attacked run) against rows recorded from the code before it.

`UNLEARN_RECORD_GOLDEN=1 pytest tests/test_golden.py` rewrites tests/golden_rows.json from the current code (do
that only for a change that is meant to move numbers, and say which in the commit)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from conftest import TINY
from test_diffusion import ADAM, TINY_DIFFUSION
from test_llm import ADAMW, TINY_LLM
from test_t2i import TINY_WORLD
from unlearn.config import build, compose_config
from unlearn.pipeline import Experiment
from unlearn.results import load_rows

GOLDEN = Path(__file__).with_name("golden_rows.json")
RECORD = os.environ.get("UNLEARN_RECORD_GOLDEN") == "1"

CASES = {
    "classification": [*TINY, "method=salun", "method.epochs=2"],
    "facts": [*TINY_LLM, "method=npo", *ADAMW, "method.lr=5e-4", "method.epochs=2"],
    "digits_gen": [*TINY_DIFFUSION, "method=rl", *ADAM, "method.epochs=1"],
    "shapes_t2i": [*TINY_WORLD, "method=uce"],
    "stream": [*TINY, "scenario=sequence", "scenario.steps=2", "method=ft", "method.epochs=2"],
    "population": [*TINY, "eval.oracles=3", "method=ga", "method.epochs=2"],
    "pruned": [*TINY, "prune=omp", "prune.rate=0.8", "prune.rewind_epoch=1", "method=l1_sparse", "method.epochs=2"],
    "attacked": [*TINY, "attack=relearn", "method=ga", "method.epochs=2"],
}


def numbers(row: dict) -> dict:
    """What a row measured (timings aside: they are the machine's, not the pipeline's)."""
    keep = lambda metrics: {k: v for k, v in metrics.items() if "RTE" not in k and not k.endswith("_s")}  # noqa: E731
    return {"metrics": keep(row["metrics"]), "original": keep(row["reference"]["original"]),
            "oracle": keep(row["reference"]["oracle"]), "status": row["status"]}


def run_case(overrides: list[str], tmp_path: Path, cache: Path) -> list[dict]:
    table = tmp_path / "table.jsonl"
    cfg = compose_config(*overrides, f"cache_dir={cache}", f"table_path={table}", f"results_dir={tmp_path}",
                         "save_model=false")
    build(cfg.scenario).run(Experiment(cfg), run_dir=tmp_path / "run")
    return [numbers(row) for row in load_rows(table)]


def same(recorded, now, where: str) -> None:
    if isinstance(recorded, dict):
        assert set(recorded) == set(now), f"{where}: keys differ: {sorted(set(recorded) ^ set(now))}"
        for key in recorded:
            same(recorded[key], now[key], f"{where}.{key}")
    elif isinstance(recorded, float) and math.isnan(recorded):
        assert isinstance(now, float) and math.isnan(now), f"{where}: {now} (recorded NaN)"
    elif isinstance(recorded, (int, float)):
        assert now == pytest.approx(recorded, rel=1e-9, abs=1e-12), f"{where}: {now} (recorded {recorded})"
    else:
        assert now == recorded, f"{where}: {now} (recorded {recorded})"


@pytest.mark.parametrize("case", list(CASES))
def test_the_pipeline_gives_the_recorded_numbers(case, tmp_path, shared_cache):
    rows = run_case(CASES[case], tmp_path, shared_cache)
    if RECORD:
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**recorded, case: rows}, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    recorded = json.loads(GOLDEN.read_text())[case]
    assert len(rows) == len(recorded)
    for i, (was, now) in enumerate(zip(recorded, rows)):
        same(was, now, f"{case}[{i}]")
