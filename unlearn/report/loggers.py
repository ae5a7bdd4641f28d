"""Where result rows go: always to result.json and the experiment table (`record_row`), and to any extra
sinks (`Logger`s, e.g. Weights & Biases) chosen with `logger=`."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock


class Logger:
    def start(self, run_dir: Path | None, config: dict[str, Any]) -> None:
        pass

    def log_epoch(self, stage: str, epoch: int, loss: float) -> None:
        pass

    def log_result(self, row: dict[str, Any], run_dir: Path | None) -> None:
        pass

    def finish(self) -> None:
        pass


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file beside it, so a killed run leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one line under an exclusive lock (a sidecar `.lock` file, on every platform), so parallel sweep
    workers never interleave rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, default=str) + "\n"
    with FileLock(path.with_name(path.name + ".lock")), open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def record_row(row: dict[str, Any], run_dir: Path | None, table_path: Path) -> None:
    """The local record every run writes, whatever loggers are chosen: result.json in the run dir and one
    line in the experiment table. Loggers are extra sinks on top of it."""
    if run_dir is not None:
        write_json_atomic(Path(run_dir) / "result.json", row)
    append_jsonl(Path(table_path), row)


class WandbLogger(Logger):
    """The same row to Weights & Biases: config, per-epoch losses, final metrics and the run's table.

    With no API key (or `mode: offline`) the run is written offline under the run dir, to sync later with
    `wandb sync`; the harness run succeeds either way.
    """

    def __init__(self, project: str = "unlearn", entity: str | None = None, mode: str = "auto",
                 group: str | None = None, tags: list[str] | None = None):
        self.project, self.entity, self.group, self.tags = project, entity, group, list(tags or [])
        self.mode = mode
        self._run = None
        self._step = 0

    def _resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        has_key = bool(os.environ.get("WANDB_API_KEY")) or (Path.home() / ".netrc").exists()
        return os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")

    def start(self, run_dir: Path | None, config: dict[str, Any]) -> None:
        import wandb

        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(project=self.project, entity=self.entity, group=self.group, tags=self.tags,
                               mode=self._resolved_mode(), dir=str(run_dir) if run_dir else None,
                               config=config, reinit="finish_previous")

    def log_epoch(self, stage: str, epoch: int, loss: float) -> None:
        self._run.log({f"{stage}/loss": loss, f"{stage}/epoch": epoch}, step=self._step)
        self._step += 1

    def log_result(self, row: dict[str, Any], run_dir: Path | None) -> None:
        import wandb

        run = self._run
        run.config.update({k: row[k] for k in ("task", "data", "model", "method", "seed")}, allow_val_change=True)
        summary = {f"metrics/{k}": v for k, v in row["metrics"].items()}
        summary |= {f"gap/{k}": v for k, v in row["gap"].items()} | {"avg_gap": row["avg_gap"], "status": row["status"]}
        for ref in ("original", "oracle"):
            summary |= {f"{ref}/{k}": v for k, v in row["reference"][ref].items()}
        run.log(summary, step=self._step)
        names = sorted(set(row["metrics"]) | set(row["reference"]["oracle"]))
        table = wandb.Table(columns=["model", *names, "avg_gap"])
        table.add_data("original", *[row["reference"]["original"].get(n) for n in names], None)
        table.add_data("oracle", *[row["reference"]["oracle"].get(n) for n in names], 0.0)
        table.add_data(row["method"], *[row["metrics"].get(n) for n in names], row["avg_gap"])
        run.log({"results": table}, step=self._step)
        run.summary.update(summary)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
