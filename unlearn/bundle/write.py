"""`python -m unlearn export <run dir | table> <out>`: a release bundle of recorded runs.

Everything that can be refused is refused before anything is computed or written (`plan.py`). Then, per row:
the original and the oracle come from the cache (or are retrained, deterministically), the unlearned model from the
run dir (`model.pt`, read with torch's weights-only loader: your own run, never a bundle; or an HF `model/`
folder's safetensors) or, where the run did not save it or its saved model does not give the row, by rerunning the
row's command in this process. The weights are rebuilt from the very tensors about to be written and re-evaluated
as verify will; a row whose metrics they do not give (exactly on the row's torch, threads and device; else within
tolerance) is refused.

The bundle is written into a temporary folder beside <out> and renamed into place at the end: a refused or failed
export leaves nothing.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata as md
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearn.bundle import files
from unlearn.bundle.models import (WeightsMismatch, changed, compare_row, evaluation_code, rebuild, reevaluate,
                                   spreads, state_of)
from unlearn.bundle.plan import Source, plan
from unlearn.errors import BadInputError, UnlearnError
from unlearn.reproduce.compare import exact_reason

#: Config keys that say where one machine kept things: blanked in a bundled config (verify sets its own).
LOCAL_KEYS = {"results_dir": "outputs", "cache_dir": None}


class ExportRefused(UnlearnError):
    """Recorded weights that do not give their row's metrics (exit 1: nothing is written)."""


# ---- the weights -------------------------------------------------------------------------------------------
def saved_unlearned(x, run_dir: Path | None) -> nn.Module | None:
    """The unlearned model a run saved (`save_model=true`), or None where it saved none."""
    if run_dir is None:
        return None
    if (run_dir / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return rebuild(x, load_file(str(run_dir / "model.safetensors")))
    if (run_dir / "model.pt").is_file():
        # The exporter's own run (save_model's format); the weights-only unpickler builds tensors and containers only.
        payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
        return rebuild(x, payload["state_dict"])
    folder = run_dir / "model"
    if folder.is_dir() and any(folder.glob("*.safetensors")) and not (folder / "adapter_config.json").exists():
        from safetensors.torch import load_file

        tensors = {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
        model = x.models.new_model(x.seed, "load")
        # save_pretrained leaves out tied copies (lm_head = embeddings): those names are missing, none unexpected.
        if model.load_state_dict(tensors, strict=False).unexpected_keys:
            return None
        return model
    return None


def rerun(source: Source, art, splits) -> tuple[nn.Module, dict[str, Any]]:
    """(θu, its row) from the row's own run, in this process, on the prepared original and oracle."""
    from unlearn.pipeline.step import Step

    row = source.committed.row
    step = Step(art, splits, art.original, art.original_key)
    again, unlearned = step.run(source.x, run_dir=None, loggers=[], labels={"model": row.get("model")},
                                command=row.get("command", ""), save_model=False)
    if unlearned is None:
        raise ExportRefused(f"{source.committed.label}: rerunning its command, the method diverged; nothing written")
    return unlearned, again


def scrubbed(config: dict[str, Any]) -> dict[str, Any]:
    """The resolved config as bundled: where this machine kept its files is left out."""
    experiment = config.get("experiment", "default")
    return config | LOCAL_KEYS | {"table_path": f"outputs/{experiment}/table.jsonl"}


def environment(x) -> dict[str, Any]:
    """The exporting environment: a row's environment fields (harness, library versions, device, threads) as the
    experiment `x` ran here, and the version of every installed package."""
    packages = {d.metadata["Name"]: d.version for d in md.distributions() if d.metadata["Name"]}
    return x.environment() | {"packages": dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))}


def code_sha256() -> str:
    """SHA-256 over the harness's Python source (path and content of every unlearn/**/*.py): the code identity."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        h.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


# ---- one run -------------------------------------------------------------------------------------------------
@dataclass
class Checked:
    """Unlearned weights as they would be bundled, and what re-evaluating them from those tensors gave."""

    tensors: dict[str, torch.Tensor]
    found: dict[str, dict[str, float]]
    bundled: dict[str, Any]          # the row the bundle carries
    drift: list[dict[str, Any]]      # its comparisons that drift (none: bundle it)
    reason: str | None               # why the comparison with the recorded row is not exact (None: exact)
    recorded_beside: bool = False    # the rerun's row is bundled; the recorded one goes beside it


def check(source: Source, art, unlearned: nn.Module, again: dict[str, Any] | None, spread: dict) -> Checked:
    """Rebuild the three models from the tensors a bundle would hold (the unlearned model as only its changes where
    the original is published), re-evaluate them, and compare with the row (see the module docstring)."""
    x, row, label = source.x, source.committed.row, source.committed.label
    published = x.models.checkpoints
    tensors = state_of(unlearned)
    diff = "original" in published
    if diff:  # a published base is not bundled: only what the method changed is
        tensors = changed(tensors, state_of(art.original))
    try:
        bases = {role: (x.models.published(role)[0] if role in published else rebuild(x, state_of(model)))
                 for role, model in (("original", art.original), ("oracle", art.oracle)) if model is not None}
        models = {"unlearned": rebuild(x, tensors, bases["original"] if diff else None), **bases}
    except WeightsMismatch as exc:
        raise BadInputError(f"{label}: its models do not load back into the model its config builds ({exc})") from None
    found = reevaluate(x, {role: models.get(role) for role in ("unlearned", "original", "oracle")}, art.original_key,
                       art.oracle_key)
    gap_metrics = x.builder.gap_metrics(x.task.gap_metrics)
    reason = exact_reason(row, {"environment": x.environment()})
    records, _ = compare_row(label, row, found, reason is None, spread, gap_metrics)
    drift = [r for r in records if r["status"] == "drift"]
    if again is not None and reason is not None and not drift:
        # Re-created in another environment, within tolerance of the recorded row: the bundle carries the row these
        # weights gave here (so verify compares exactly where it can), the recorded row beside it.
        records, _ = compare_row(label, again, found, True, spread, gap_metrics)
        return Checked(tensors, found, again, [r for r in records if r["status"] == "drift"], reason, True)
    return Checked(tensors, found, row, drift, reason)


def export_run(source: Source, number: int, out: Path, spread: dict, written: set[str]) -> dict[str, Any]:
    """Write run `number` of the bundle into `out`; its bundled row. ExportRefused if neither the saved weights nor
    those its command re-creates give the row's metrics."""
    from unlearn.config import plain

    x, row, label = source.x, source.committed.row, source.committed.label
    art = x.prepare()
    splits = x.splits()
    forget = x.request.forget
    on_disk = source.run_dir / "forget_indices.json" if source.run_dir else None
    if on_disk is not None and on_disk.is_file() and \
            json.loads(on_disk.read_text()).get("indices") != forget.indices.tolist():
        raise BadInputError(f"{label}: its run dir's forget_indices.json differs from the forget set its command "
                            f"gives; nothing written")
    try:
        unlearned, why = saved_unlearned(x, source.run_dir), "the run saved none"
    except Exception as exc:  # noqa: BLE001 - a saved model this code cannot read back: made again instead
        unlearned, why = None, f"its saved model does not load: {type(exc).__name__}: {str(exc).strip()[:120]}"
    again = None
    checked = check(source, art, unlearned, None, spread) if unlearned is not None else None
    if checked is not None and checked.drift:
        # A saved model can lose what the run evaluated (a pruned model's masks are folded into model.pt).
        first = checked.drift[0]
        why = (f"its saved model gives {first['model']} {first['metric']}={first['reevaluated']:.8g}, not "
               f"{first['bundled']:.8g}")
    if checked is None or checked.drift:
        source.notes.append(f"unlearned weights: re-created by rerunning its command ({why})")
        unlearned, again = rerun(source, art, splits)
        checked = check(source, art, unlearned, again, spread)
    else:
        source.notes.append("unlearned weights: saved by the run")
    if checked.drift:
        first = checked.drift[0]
        raise ExportRefused(f"{label}: its {'re-created' if again is not None else 'saved'} weights do not give the "
                            f"recorded metrics ({first['model']} {first['metric']}: recorded {first['bundled']:.8g}, "
                            f"re-evaluated {first['reevaluated']:.8g}"
                            f"{'' if checked.reason is None else f'; {checked.reason}'}); nothing written")
    if checked.recorded_beside:
        files.write_json(out / f"runs/{number}/recorded_row.json", row)
        source.notes.append(f"bundled row: the rerun's (the recorded row is within tolerance: {checked.reason})")
    published = x.models.checkpoints
    diff = "original" in published
    tensors, found, bundled = checked.tensors, checked.found, checked.bundled
    states = {"original": art.original, "oracle": art.oracle}
    folder = f"runs/{number}"
    identities = {"original": art.original_key, "oracle": art.oracle_key}
    entries = {}
    for role, model in states.items():
        if model is None:
            entries[role] = None
            continue
        entry = {"identity": identities[role]}
        if role in published:
            entry["published"] = {"path": published[role].path, "revision": published[role].revision,
                                  "identity": published[role].identity}
        else:
            entry["file"] = f"models/{identities[role]}.safetensors"
            if entry["file"] not in written:  # runs of one seed share their original and oracle
                files.write_tensors(out / entry["file"], state_of(model), {"role": role, "identity": identities[role]})
                written.add(entry["file"])
        entries[role] = entry
    files.write_tensors(out / folder / "unlearned.safetensors", tensors,
                        {"role": "unlearned", "diff_against": "original" if diff else ""})
    files.write_json(out / folder / "config.json", scrubbed(plain(x.cfg)))
    files.write_json(out / folder / "forget_indices.json", {
        "indices": forget.indices.tolist(),
        "test_indices": None if forget.test_indices is None else np.asarray(forget.test_indices).tolist(),
        "description": forget.description})
    files.write_json(out / folder / "run.json", {
        "row": number, "source": source.committed.label, "command": row.get("command"),
        "overrides": list(source.overrides), "seed": x.seed,
        "unlearned": {"file": f"{folder}/unlearned.safetensors", "diff_against": "original" if diff else None,
                      "origin": "saved by the run" if again is None else "re-created by rerunning its command"},
        "original": entries["original"], "oracle": entries["oracle"], "forget_indices": f"{folder}/forget_indices.json",
        "config": f"{folder}/config.json", "evaluation_code": evaluation_code(x),
        "evaluation": {"environment": x.environment(), "metrics": found}})
    return bundled


# ---- the command ---------------------------------------------------------------------------------------------
def export(path: str | Path, out: str | Path, rows: str | None = None, cache: str | Path | None = None) -> str:
    """Write the bundle of the rows at `path` (a run dir or a table; `rows`: reproduce's --rows selection) to
    `out`, which must not exist; the summary line. BadInputError (exit 2) or ExportRefused (exit 1) with nothing
    written; progress on stderr."""
    path, out = Path(path), Path(out)
    if out.exists():
        raise BadInputError(f"{out} already exists; give a new folder for the bundle")
    if not out.parent.is_dir():
        raise BadInputError(f"{out.parent}: no such folder to write the bundle in")
    with tempfile.TemporaryDirectory(prefix="unlearn-export-") as scratch:
        sources, problems = plan(path, rows, Path(cache) if cache else None, Path(scratch))
        if problems:
            raise BadInputError("\n".join([*problems, f"nothing written: {len(problems)} of "
                                           f"{len(problems) + len(sources)} rows cannot be bundled"]))
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            spread = spreads([s.committed.row for s in sources])
            bundled, written = [], set()
            for number, source in enumerate(sources):
                print(f"run {number + 1}/{len(sources)}: {source.committed.label}", file=sys.stderr, flush=True)
                bundled.append(export_run(source, number, tmp, spread, written))
                for note in source.notes:
                    print(f"  {note}", file=sys.stderr, flush=True)
            files.write_jsonl(tmp / files.ROWS, bundled)
            env = environment(sources[0].x)
            files.write_json(tmp / files.ENVIRONMENT, env)
            listed = files.file_records(tmp)
            files.write_json(tmp / files.MANIFEST, {
                "format": files.FORMAT, "version": files.VERSION,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "harness": env["harness"], "code_sha256": code_sha256(),
                "environment": {k: v for k, v in env.items() if k != "packages"},
                "runs": [f"runs/{n}/run.json" for n in range(len(sources))], "files": listed})
            tmp.rename(out)  # the whole bundle appears at once
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    size = sum(r["size"] for r in listed.values())
    return f"wrote {out}: {len(sources)} run{'s' if len(sources) != 1 else ''}, {len(listed) + 1} files, " \
           f"{size / 1e6:.1f} MB"
