"""Body of `python run.py`: turn Hydra's composed config into one recorded run."""
from __future__ import annotations

import logging
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unlearn.cache import Cache
from unlearn.config import build, check_choices
from unlearn.errors import BadInputError, DivergedError
from unlearn.pipeline import Experiment
from unlearn.pipeline.jobs import Stage, build_member, require_members
from unlearn.report.loggers import write_json_atomic

log = logging.getLogger("unlearn")


def run_from_hydra(cfg: DictConfig) -> float:
    started = time.perf_counter()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    command = "python " + shlex.join(sys.argv)
    loggers = []
    try:
        stage = Stage.of(cfg)  # stage=all (the run), members (one population member, no row) or metrics
        cache = Cache(cfg.cache_dir, enabled=bool(cfg.use_cache))
        cache.check_writable()
        experiment = Experiment(cfg, cache)
        stage.check(experiment)
        if stage.name == "members":  # the member's cache entries only: no row, no table line
            setup = time.perf_counter() - started  # the job's own start-up: checks, Experiment, before any stage
            write_json_atomic(run_dir / "member.json", build_member(experiment, stage.member) | {"setup_s": setup})
            return float("nan")
        if stage.name == "metrics":
            require_members(experiment, list(hydra_cfg.overrides.task))
        loggers = [build(node) for node in cfg.logger.values()]
        scenario = build(cfg.scenario)  # single: experiment.run; sequence: one row per request
        row = scenario.run(experiment, run_dir=run_dir, loggers=loggers, labels=dict(hydra_cfg.runtime.choices),
                           command=command)
        # Data-parallel: only rank 0's run dir holds the run; another rank's (a later timestamp) goes.
        if experiment.runtime.from_main(str(run_dir)) != str(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
    except BadInputError as exc:
        # Bad input: one clear line, and no run folder left behind (nor the empty folders above it Hydra made).
        shutil.rmtree(run_dir, ignore_errors=True)
        _remove_empty_parents(run_dir.parent, Path(cfg.results_dir))
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except DivergedError as exc:
        # Outside the method stage (the method's own divergence is a recorded row): the recipe of the original or
        # the oracle diverged. Not bad input, and nothing to record; the run dir keeps its log.
        print(f"error: training diverged outside the unlearning method: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        for lg in loggers:
            lg.finish()
    # What an Optuna sweeper minimises (`python -m unlearn tune`); a diverged run's NaN would fail the trial.
    return row["avg_gap"] if math.isfinite(row["avg_gap"]) else math.inf


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents while they are empty, up to and including `stop` (results_dir)."""
    stop = stop.resolve()
    folder = folder.resolve()
    while folder == stop or stop in folder.parents:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            return
        if folder == stop:
            return
        folder = folder.parent


def refuse_unknown_choices(argv: list[str]) -> None:
    """`python run.py method=nosuch`: one line naming the valid choices, exit 2, before Hydra starts."""
    try:
        check_choices(argv)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

