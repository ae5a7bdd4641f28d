"""Planning an export: the rows a source names and, for each, every refusal before anything is computed.

A row can be bundled when it is an `ok` row of a single-request run (`scenario=single`) that records the
`python run.py` command that made it (rebuilt for one run by the reproduce planner, as `reproduce` does) and a
config of the harness's own targets, whose method starts from the pipeline's original (not an exact method's own
ensemble) and trains every weight (no LoRA adapters). Each row's Experiment is built here (nothing trains), so a
config this code refuses is refused before anything else happens.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.bundle import files
from unlearn.bundle.files import BadBundle
from unlearn.errors import BadInputError
from unlearn.reproduce.plan import Committed, Planner, Unreproducible, load_table, select


@dataclass
class Source:
    """One row to bundle, where its weights may lie, and the run it was made by (rebuilt from its command)."""

    committed: Committed
    run_dir: Path | None
    overrides: tuple[str, ...]
    x: Any = None  # the Experiment, built in planning (every refusal of the config comes first)
    notes: list[str] = field(default_factory=list)


# ---- planning: every refusal before anything runs -----------------------------------------------------------
def rows_of(path: Path, rows: str | None) -> list[tuple[Committed, Path | None]]:
    """(row, run dir holding its weights or None) for a run dir (its result.json) or a table (.jsonl, .md)."""
    if path.is_dir():
        result = path / "result.json"
        if not result.is_file():
            raise BadInputError(f"{path} is neither a run dir (it holds no result.json) nor a table (.jsonl)")
        try:
            row = json.loads(result.read_text())
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{result} is not readable JSON ({exc})") from None
        chosen = [Committed(path.name, 0, row, f"{path.name} ({row.get('method', '?')} s{row.get('seed', '?')})")]
        return [(c, path) for c in select(chosen, rows)]
    if not path.exists():
        raise BadInputError(f"{path}: no such run dir or table")
    out = []
    for c in select(load_table(path), rows):
        if not isinstance(c.row, dict):
            raise BadInputError(f"{path}: row {c.index} is not a result row (a JSON object)")
        recorded = c.row.get("run_dir")
        out.append((c, Path(recorded) if recorded and Path(recorded).is_dir() else None))
    return out


def refusal(row: dict[str, Any]) -> str | None:
    """Why a row cannot be bundled before its command is even looked at, or None."""
    config = row.get("config") or {}
    if row.get("status") != "ok":
        return f"its status is {row.get('status')!r}: there is no unlearned model to bundle"
    if row.get("step") is not None or not str((config.get("scenario") or {}).get("_target_", "")).endswith(".Single"):
        return "it is a step of a deletion stream (scenario=sequence); bundles hold single-request runs"
    if ((config.get("model") or {}).get("lora") or {}).get("r"):
        return "its method trained LoRA adapters (model.lora.r); bundles hold models that train every weight"
    try:
        files.check_config(config, "its config")
    except BadBundle as exc:
        return str(exc)
    return None


def plan(path: Path, rows: str | None, cache: Path | None, scratch: Path) -> tuple[list[Source], list[str]]:
    """(the sources to bundle, one line per row that cannot be bundled). Builds each row's Experiment (no training)."""
    from unlearn.cache import default_cache_dir
    from unlearn.config import compose_config
    from unlearn.pipeline import Experiment

    planner, sources, problems = Planner(), [], []
    for committed, run_dir in rows_of(path, rows):
        why = refusal(committed.row)
        try:
            if why:
                raise Unreproducible(why)
            overrides, _ = planner.overrides_of(committed.row)
            recorded_cache = (committed.row.get("config") or {}).get("cache_dir")
            store = cache or (Path(recorded_cache) if recorded_cache and Path(recorded_cache).is_dir()
                              else default_cache_dir())
            cfg = compose_config(*overrides)
            cfg.results_dir, cfg.cache_dir, cfg.save_model = str(scratch / "runs"), str(store), False
            cfg.table_path = str(scratch / "table.jsonl")
            x = Experiment(cfg)
            if x.models.builds_own_original():
                raise Unreproducible(f"method {x.method.name!r} builds its own original (exact unlearning), which "
                                     f"a model config cannot rebuild")
        except BadInputError as exc:
            problems.append(f"cannot bundle {committed.label}: {exc}")
            continue
        sources.append(Source(committed, run_dir, overrides, x))
    return sources, problems
