"""python run.py [group=choice ...] [key=value ...]   (Hydra; -m for sweeps)"""
import sys

import hydra
from omegaconf import DictConfig

from unlearn.cli import refuse_unknown_choices, run_from_hydra


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    return run_from_hydra(cfg)


if __name__ == "__main__":
    refuse_unknown_choices(sys.argv[1:])
    main()
