"""Reading a bundle (`Bundle`) and `python -m unlearn verify <bundle>`.

`Bundle(path)` checks the manifest first (every file present, unaltered, listed, of a kind that cannot run when
read); each run's config must select only the harness's own targets. `open_run` builds the run's experiment from
its bundled config (data, task and model as the run had them; nothing trains), sets the bundled forget set as its
request, and loads the bundled models from safetensors (a published original or oracle, which a bundle names by its
files' hashes instead of holding, from its path once those hashes match). `verify` re-evaluates the three models of
each run with the harness's own evaluation (and the run's attack, if it had one) and compares every re-evaluated
metric with the bundled row.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from unlearn.bundle import files
from unlearn.bundle.files import BadBundle
from unlearn.bundle.models import WeightsMismatch, compare_row, evaluation_code, rebuild, reevaluate, spreads
from unlearn.errors import BadInputError
from unlearn.eval.gap import average_gap, gaps
from unlearn.reproduce.compare import exact_reason

@dataclass
class OpenRun:
    """One bundled run, ready: its experiment (whose request is the bundled forget set), the splits evaluation sees,
    the models by role (`unlearned`, `original`, `oracle`; the oracle None where the run had none), the row."""

    number: int
    x: Any
    splits: Any
    models: dict[str, nn.Module | None]
    original_key: str
    row: dict[str, Any]
    info: dict[str, Any]


class Bundle:
    """A bundle written by `python -m unlearn export`, its manifest checked (BadBundle: one line, naming the file)."""

    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.manifest = files.check_manifest(self.root)
        self.listed = set(self.manifest["files"])
        self.rows = files.read_jsonl(self.root, self._named(files.ROWS, "its rows"))
        runs = self.manifest.get("runs")
        if not isinstance(runs, list) or not runs:
            raise BadBundle(f"{files.MANIFEST} names no runs")
        self.runs = [self._run_info(number, name) for number, name in enumerate(runs)]

    def _named(self, name: Any, what: str) -> str:
        """`name` if it is a file the (checked) manifest lists; BadBundle naming `what` otherwise."""
        if not isinstance(name, str) or name not in self.listed:
            raise BadBundle(f"{what} ({name!r}) is not a file of the bundle")
        return files.safe_name(name)

    def _run_info(self, number: int, name: Any) -> dict[str, Any]:
        info = files.read_json(self.root, self._named(name, f"run {number}"))
        where = f"run {number} ({name})"
        if not isinstance(info, dict) or not isinstance(info.get("row"), int) or not 0 <= info["row"] < len(self.rows) \
                or not isinstance(self.rows[info["row"]], dict):
            raise BadBundle(f"{where} names no row of {files.ROWS}")
        for role in ("original", "oracle"):
            entry = info.get(role)
            if entry is not None and not (isinstance(entry, dict) and isinstance(entry.get("identity"), str)
                                          and (isinstance(entry.get("published"), dict) or "file" in entry)):
                raise BadBundle(f"{where}: its {role} is neither a bundled file nor a published checkpoint")
        if info.get("original") is None or not isinstance(info.get("unlearned"), dict):
            raise BadBundle(f"{where} names no original or no unlearned model")
        # Every run is checked before any is built: a bad run refuses the bundle before anything runs.
        self._named(info.get("forget_indices"), f"{where}'s forget set")
        self._named(info["unlearned"].get("file"), f"{where}'s unlearned model")
        for role in ("original", "oracle"):
            if (info.get(role) or {}).get("file") is not None:
                self._named(info[role]["file"], f"{where}'s {role}")
        config = f"run {number}'s config"
        info["config_values"] = files.check_config(files.read_json(self.root, self._named(info.get("config"), config)),
                                                   config)
        return info

    # ---- one run ---------------------------------------------------------------------------------------
    def open_run(self, number: int = 0, scratch: str | Path | None = None,
                 paths: dict[str, str] | None = None) -> OpenRun:
        """Run `number` built and loaded (see the module docstring). `scratch`: the cache and output folder the
        experiment may use (default: a new temporary folder, left for the caller to remove); `paths`: {role: where your copy of a published
        original / oracle lies} (default: the path the exporter had). BadBundle on anything that does not fit."""
        from omegaconf import OmegaConf

        from unlearn.pipeline import Experiment

        if not 0 <= number < len(self.runs):
            raise BadInputError(f"the bundle has runs 0..{len(self.runs) - 1}, not {number}")
        info = self.runs[number]
        row = self.rows[info["row"]]
        where = f"run {number}"
        config = info["config_values"]
        scratch = Path(scratch or tempfile.mkdtemp(prefix="unlearn-verify-"))
        config = config | {"results_dir": str(scratch / "out"), "table_path": str(scratch / "out" / "table.jsonl"),
                           "cache_dir": str(scratch / "cache"), "save_model": False, "logger": {}, "use_cache": True,
                           "stage": "all", "member": None, "device": _device(row, config)}
        for role in ("original", "oracle"):
            published = (info.get(role) or {}).get("published")
            if published:
                config = _moved(config, role, str(published.get("path")), (paths or {}).get(role))
        try:
            x = Experiment(OmegaConf.create(config))
            data, _ = x.data()
        except BadInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a config this harness cannot build: the bundle's fault, one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise BadBundle(f"{where}'s config does not build an experiment here ({type(exc).__name__}: "
                            f"{first[:200]})") from None
        forget = self._forget(info, len(data.train), len(data.test), row, where)
        x.request.set_forget(forget, f"bundle-forget-{files.sha256_of(self.root / info['forget_indices'])[:32]}")
        models = self._models(x, info, where)
        return OpenRun(number, x, x.splits(), models, info["original"]["identity"], row, info)

    def _forget(self, info: dict, n_train: int, n_test: int, row: dict, where: str):
        from unlearn.data.forget import ForgetSet

        content = files.read_json(self.root, self._named(info.get("forget_indices"), f"{where}'s forget set"))
        if not isinstance(content, dict):
            raise BadBundle(f"{where}'s forget set is not a JSON object")
        arrays = {}
        for key, limit in (("indices", n_train), ("test_indices", n_test)):
            values = content.get(key)
            if values is None and key == "test_indices":
                arrays[key] = None
                continue
            if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise BadBundle(f"{where}'s forget set: {key} must be a list of integers")
            array = np.asarray(values, dtype=np.int64)
            if len(array) and (array.min() < 0 or array.max() >= limit or len(np.unique(array)) != len(array)):
                raise BadBundle(f"{where}'s forget set: {key} must be distinct indices in 0..{limit - 1}")
            arrays[key] = np.sort(array)
        size = (row.get("forget") or {}).get("size")
        if size is not None and size != len(arrays["indices"]):
            raise BadBundle(f"{where}'s forget set holds {len(arrays['indices'])} indices; its row records {size}")
        description = content.get("description") if isinstance(content.get("description"), dict) else {}
        return ForgetSet(arrays["indices"], arrays["test_indices"], description)

    def _models(self, x, info: dict, where: str) -> dict[str, nn.Module | None]:
        models: dict[str, nn.Module | None] = {}
        try:
            for role in ("original", "oracle"):
                entry = info.get(role)
                if entry is None:
                    models[role] = None
                elif entry.get("published"):
                    models[role] = self._published(x, role, entry["published"], where)
                else:
                    name = self._named(entry["file"], f"{where}'s {role}")
                    models[role] = rebuild(x, files.read_tensors(self.root, name))
            unlearned = info["unlearned"]
            base = models["original"] if unlearned.get("diff_against") == "original" else None
            tensors = files.read_tensors(self.root, self._named(unlearned.get("file"), f"{where}'s unlearned model"))
            models["unlearned"] = rebuild(x, tensors, base)
        except WeightsMismatch as exc:
            raise BadBundle(f"{where}: bundled weights do not fit the model its config builds ({exc})") from None
        return models

    @staticmethod
    def _published(x, role: str, published: dict, where: str) -> nn.Module:
        """A published original/oracle from where the experiment found it, once its files hash as recorded."""
        found = x.models.checkpoints.get(role)
        recorded = (published.get("identity") or {}).get("files")
        if found is None or found.identity.get("files") != recorded:
            raise BadBundle(f"{where}: the published {role} at {found.path if found else '?'} is not the one the "
                            f"bundle was made with (its files' SHA-256 differ); give your copy with --{role} PATH")
        return x.models.published(role)[0]

    def score(self, model: nn.Module, number: int = 0, opened: OpenRun | None = None) -> dict[str, Any]:
        """Your model (`model`: made by your method from `open_run(number).models["original"]` on its splits'
        forget and retain sets) scored by the harness's evaluation against the run's forget set and oracle:
        {"metrics": ..., "gap": |metric − oracle's| per gap metric, "avg_gap": their mean}."""
        run = opened or self.open_run(number)
        found = reevaluate(run.x, run.models | {"unlearned": model}, run.original_key,
                           (run.info.get("oracle") or {}).get("identity"))
        gap = gaps(found["unlearned"], found.get("oracle", {}), run.x.builder.gap_metrics(run.x.task.gap_metrics))
        return {"metrics": found["unlearned"], "gap": gap, "avg_gap": average_gap(gap)}


def _device(row: dict, config: dict) -> str:
    """The device the run used (a row run with device=auto: its recorded device type); the CPU where this machine
    lacks CUDA (its numbers are then compared within tolerance)."""
    import torch

    configured = str(config.get("device") or "auto")
    recorded = str((row.get("environment") or {}).get("device") or "cpu")
    wanted = configured if configured != "auto" else recorded.split(":")[0]
    return "cpu" if wanted.startswith("cuda") and not torch.cuda.is_available() else wanted


def _moved(config: Any, role: str, recorded: str, given: str | None) -> Any:
    """The config with the exporter's path of a published model replaced by `given` wherever it appears (a resolved
    config repeats it: model.name, data.task.tokenizer)."""
    if not given or given == recorded:
        return config
    if isinstance(config, dict):
        return {k: _moved(v, role, recorded, given) for k, v in config.items()}
    if isinstance(config, list):
        return [_moved(v, role, recorded, given) for v in config]
    return given if config == recorded else config


def verify(path: str | Path, cache: str | Path | None = None, paths: dict[str, str] | None = None
           ) -> tuple[int, str]:
    """(exit status, report): 0 when every re-evaluated metric of every run matches its bundled row, 1 on any
    drift; BadBundle (exit 2) where the bundle itself is at fault."""
    import pandas as pd

    bundle = Bundle(path)
    spread = spreads(bundle.rows)
    notes, records, skipped = [], [], set()
    with tempfile.TemporaryDirectory(prefix="unlearn-verify-") as scratch:
        for number, info in enumerate(bundle.runs):
            run = bundle.open_run(number, Path(cache) if cache else Path(scratch) / f"run{number}", paths)
            found = reevaluate(run.x, run.models, run.original_key, (info.get("oracle") or {}).get("identity"))
            reason = exact_reason(run.row, {"environment": run.x.environment()})
            code = "" if info.get("evaluation_code") == evaluation_code(run.x) else \
                "; the evaluation code differs from the exporter's"
            label = f"{number} {run.row.get('method', '?')} s{run.row.get('seed', '?')}"
            notes.append(f"- run {label}: " + ("exact (same torch, threads and device)" if reason is None else
                                               f"within tolerance ({reason})") + code)
            got, missed = compare_row(label, run.row, found, reason is None, spread,
                                      run.x.builder.gap_metrics(run.x.task.gap_metrics))
            records += got
            skipped.update(m.split(".", 1)[1] for m in missed)
    frame = pd.DataFrame(records).rename(columns={"reevaluated": "re-evaluated", "diff": "abs diff"})
    counts = frame["status"].value_counts()
    drift = int(counts.get("drift", 0))
    summary = f"{int(counts.get('match', 0))} match, {drift} drift"
    listed = len(bundle.manifest["files"]) + 1
    text = "\n".join([f"# verify {path}: manifest ok ({listed} files, none missing, altered or added); {summary}", "",
                      *notes, "", frame.to_markdown(index=False, floatfmt=".8g"), "",
                      f"{summary} ({len(bundle.runs)} run{'s' if len(bundle.runs) != 1 else ''} × 3 models × their "
                      f"re-evaluated metrics)" + (f"; not compared (wall-clock times, population metrics, the "
                                                   f"method's own figures): {', '.join(sorted(skipped))}"
                                                   if skipped else "")])
    return (1 if drift else 0), text + "\n"
