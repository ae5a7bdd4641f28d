"""Body of `python run.py`: turn Hydra's composed config into one recorded run."""
from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from unlearn.config import build, check_choices
from unlearn.errors import BadInputError, DivergedError
from unlearn.pipeline import Experiment

log = logging.getLogger("unlearn")


def run_from_hydra(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    command = "python " + shlex.join(sys.argv)
    loggers = []
    try:
        experiment = Experiment(cfg)
        loggers = [build(node) for node in cfg.logger.values()]
        scenario = build(cfg.scenario)  # single: experiment.run; sequence: one row per request
        row = scenario.run(experiment, run_dir=run_dir, loggers=loggers, labels=dict(hydra_cfg.runtime.choices),
                           command=command)
        # Data-parallel: only rank 0's run dir holds the run; another rank's (a later timestamp) goes.
        if experiment.runtime.from_main(str(run_dir)) != str(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
    except BadInputError as exc:
        # Bad input: one clear line, and no run folder left behind.
        shutil.rmtree(run_dir, ignore_errors=True)
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
    return row["avg_gap"]  # what an Optuna sweeper minimises


def refuse_unknown_choices(argv: list[str]) -> None:
    """`python run.py method=nosuch`: one line naming the valid choices, exit 2, before Hydra starts."""
    try:
        check_choices(argv)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

