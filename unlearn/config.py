"""Hydra's `_target_` is the registry: a config group's choice names the class to build."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from unlearn.errors import UnlearnError


def build(node: DictConfig, **kwargs: Any) -> Any:
    """Instantiate a config node; our own errors come out unwrapped so the user sees one clear message."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, UnlearnError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str) -> DictConfig:
    """The config `python run.py <overrides>` runs, for scripts and tests (Hydra's compose API)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (for cache keys and result rows)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
